"""The pipeline split over three processes ends with the same portfolio as one process.

The domains run as ``quantum run --domains ...`` processes sharing one namespace: first all
in one process, then (in a fresh namespace) split over three. A recorded feed is published
tick by tick; after each tick the test waits until every consumer group has caught up, so
both topologies see the same order of events and must reach the same state. The
portfolio's final state (its snapshot in Redis, as the runner stores it) is compared byte
for byte, and with the same feed run in-process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from runtime import bootstrap
from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.runner import state_key
from runtime.core.actor import Actor
from runtime.core.ids import derive_event_id
from runtime.core.keys import Keyspace
from runtime.core.policy.defaults import default_policy
from runtime.core.tracing import TraceContext
from runtime.domains.market_data import CsvFeed, tick_envelope
from tests.domains.support import ROOT_ID, Chain, StubPolicyStore

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "ticks_small.csv"
ONE_PROCESS = ["ai_engine,risk_safety,execution,portfolio,analytics"]
THREE_PROCESSES = ["ai_engine,risk_safety", "execution", "portfolio,analytics"]
TICKS = 200  # enough for 3 orders and a closed position
EQUITY = Decimal("100000")


def _in_process_actors() -> list[Actor]:
    """The actors ``quantum run`` builds, reading the documented default policy."""
    store = StubPolicyStore(default_policy())
    factories = bootstrap.actor_factories(store, EQUITY)  # type: ignore[arg-type]
    return [factories[name]() for name in ONE_PROCESS[0].split(",")]


STREAMS = sorted({t.name for actor in _in_process_actors() for t in type(actor).consumes()})


def _ticks() -> list[Any]:
    return [
        tick_envelope(
            tick,
            event_id=derive_event_id(ROOT_ID, "feed", i),
            trace=TraceContext(trace_id=f"{i + 1:032x}", span_id=f"{i + 1:016x}"),
        )
        for i, tick in enumerate(list(CsvFeed(FIXTURE))[:TICKS])
    ]


@contextmanager
def _workers(url: str, keyspace: Keyspace, state_dir: Path, groups: list[str]) -> Iterator[None]:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtime.cli",
                "run",
                "--no-control-plane",
                "--redis-url",
                url,
                "--namespace",
                keyspace.namespace,
                "--state-dir",
                str(state_dir / str(n)),
                "--equity",
                str(EQUITY),
                "--log-level",
                "WARNING",
                "--domains",
                domains,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for n, domains in enumerate(groups)
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            assert proc.returncode == 0, err.decode()[-2000:]


async def _settled(redis: aioredis.Redis, keyspace: Keyspace, groups_expected: int) -> bool:
    """Every group of every stream has read and acknowledged everything."""
    pipe = redis.pipeline(transaction=False)
    for name in STREAMS:
        pipe.xinfo_groups(keyspace.stream(name))
    replies = await pipe.execute(raise_on_error=False)
    seen = 0
    for reply in replies:
        if isinstance(reply, Exception):  # the stream does not exist yet
            continue
        for group in cast(list[dict[str, Any]], reply):
            seen += 1
            if group.get("pending") or group.get("lag") != 0:  # None: unknown, wait
                return False
    return seen >= groups_expected


async def _run(
    redis: aioredis.Redis, url: str, keyspace: Keyspace, state_dir: Path, groups: list[str]
) -> bytes:
    bus = EventBus(redis, keyspace, producer="market_data")
    # one group per (domain, stream): ai 1, risk 4, execution 2, portfolio 2, analytics 2
    expected_groups = 11
    with _workers(url, keyspace, state_dir, groups):
        for envelope in _ticks():
            await bus.publish_envelope(envelope)
            deadline = asyncio.get_running_loop().time() + 30
            while not await _settled(redis, keyspace, expected_groups):
                assert asyncio.get_running_loop().time() < deadline, "pipeline did not settle"
                await asyncio.sleep(0.002)
    await bus.close()
    state = await redis.get(state_key(keyspace, "portfolio"))
    assert isinstance(state, bytes), "the portfolio stored no state"
    return state


async def test_three_processes_end_with_the_same_portfolio_as_one(
    aredis: aioredis.Redis, redis_server_url: str, tmp_path: Path
) -> None:
    spaces = [Keyspace(f"test-split-{os.getpid()}-{n}") for n in range(2)]
    try:
        one = await _run(aredis, redis_server_url, spaces[0], tmp_path / "one", ONE_PROCESS)
        three = await _run(aredis, redis_server_url, spaces[1], tmp_path / "three", THREE_PROCESSES)
    finally:
        for space in spaces:
            keys = [k async for k in aredis.scan_iter(match=space.pattern(), count=1000)]
            if keys:
                await aredis.delete(*keys)
    ledger = json.loads(one)
    assert len(ledger["applied_orders"]) >= 3, "too few fills for the comparison to prove much"
    assert three == one

    chain = Chain(_in_process_actors())
    await chain.publish_all(_ticks())
    in_process = next(a for a in chain.actors if a.name == "portfolio").snapshot_state()
    assert json.loads(in_process or b"{}") == ledger
