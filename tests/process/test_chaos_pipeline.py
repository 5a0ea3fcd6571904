"""The six domains over six processes, killed at random, with Redis killed twice: nothing lost,
nothing doubled, nothing out of order.

Layout (every domain partition in exactly one process; no control plane):

    feed            market_data (a recorded CSV at SPEED x)
    ai-p0 / ai-p1   ai_engine, partitions 0/2 and 1/2
    risk+exec-p0    risk_safety, execution partition 0/2
    exec-p1         execution partition 1/2
    book            portfolio, analytics

A driver SIGKILLs a random running process every 2-4 s and restarts it at once with the same
command (the new owner takes its partition over when the dead one's --lease-ttl of 1 s has
run out); after the 4th and 8th kill it also SIGKILLs redis-server (appendonly, appendfsync
always) and restarts it on the same port and files. A killed feed resumes after the last tick
on the stream (``--feed-skip``), found by the tick's symbol and sequence, so a tick appended
twice by a publisher's retry does not make it skip one.

The signals depend only on each symbol's ticks in order, so they must equal those of the
in-memory backtest of the same file, exactly; every approved signal is submitted as one order;
the portfolio's marks are each symbol's last price; no group holds anything; no dead letters.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from quantum.events.v1.ai_pb2 import SignalGenerated
from quantum.events.v1.envelope_pb2 import Envelope
from quantum.events.v1.execution_pb2 import OrderSubmitted
from quantum.events.v1.market_pb2 import MarketTick
from quantum.events.v1.risk_pb2 import SignalApproved

from runtime.backtest.engine import run_backtest
from runtime.core.keys import Keyspace
from runtime.core.redis_server import RedisServer, start_redis_server
from runtime.domains.market_data import CsvFeed
from tests.process.pipeline import (
    RunProcess,
    dead_letters,
    entry_envelope,
    last_prices,
    quantum_run,
    saved_state,
    stream_envelopes,
    unfinished_groups,
    write_feed,
)

pytestmark = pytest.mark.slow

TICKS = 4_000  # 50 ms apart: 200 s of feed time
SPEED = "5"  # 40 s of wall time
MIN_KILLS = 10
REDIS_KILLS_AFTER = (4, 8)  # the kill counts after which redis-server is killed too
LEASE_TTL_MS = 1_000
EQUITY = Decimal(100_000)
LAYOUT = {
    "ai-p0": ("--domains", "ai_engine", "--partition", "0/2"),
    "ai-p1": ("--domains", "ai_engine", "--partition", "1/2"),
    "risk+exec-p0": ("--domains", "risk_safety,execution", "--partition", "0/2"),
    "exec-p1": ("--domains", "execution", "--partition", "1/2"),
    "book": ("--domains", "portfolio,analytics"),
}
FEED = "feed"
DRIVE_FOR_S = 120.0
DRAIN_WITHIN_S = 90.0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis_server(appendonly=True, workdir=tmp_path / "redis")
    yield server
    server.stop()


class Chaos:
    """The run's processes and the driver that kills them."""

    def __init__(self, server: RedisServer, feed: Path, workdir: Path) -> None:
        self.server = server
        self.keyspace = Keyspace("chaos")
        self.feed = feed
        self.client = redis.Redis.from_url(server.url, socket_timeout=10)
        common = ("--lease-ttl", str(LEASE_TTL_MS), "--retain", "100000")
        state_dir = workdir / "state"

        def argv(*extra: str) -> list[str]:
            return quantum_run(server.url, self.keyspace.namespace, state_dir, *common, *extra)

        self.processes = {
            name: RunProcess(name, argv(*layout), workdir / f"{name}.log")
            for name, layout in LAYOUT.items()
        }
        self.processes[FEED] = RunProcess(
            FEED,
            argv("--domains", "market_data", "--feed", str(feed), "--speed", SPEED),
            workdir / "feed.log",
        )
        # (symbol, sequence) -> the tick's row in the file, counted from 0
        self.rows = {(tick.symbol, tick.sequence): row for row, tick in enumerate(CsvFeed(feed))}
        self.feed_done = False
        self.kills: list[str] = []
        self.redis_restarts = 0
        self.unexpected_exits: list[tuple[str, int]] = []

    def start(self) -> None:
        for name, process in self.processes.items():
            process.start(self._feed_argv() if name == FEED else None)

    def _feed_argv(self) -> list[str]:
        """The feed's command, resuming after the last tick on the stream."""
        skip = 0
        last: list[Any] = self.client.xrevrange(self.keyspace.stream("market.tick"), count=1) or []
        if last:
            tick = MarketTick.FromString(entry_envelope(last[0][1]).payload)
            skip = self.rows[(tick.symbol, tick.sequence)] + 1
        return [*self.processes[FEED].argv, "--feed-skip", str(skip)]

    def restart(self, name: str) -> None:
        process = self.processes[name]
        process.start(self._feed_argv() if name == FEED else None)

    def check_exits(self) -> None:
        """Restart a process that exited by itself (the feed's clean end excepted)."""
        for name, process in self.processes.items():
            if process.process is None or process.running:
                continue
            code = process.process.returncode
            if name == FEED and code == 0:
                self.feed_done = True
                continue
            self.unexpected_exits.append((name, code))
            self.restart(name)

    def drive(self, rng: random.Random) -> None:
        deadline = time.monotonic() + DRIVE_FOR_S
        victims: list[str] = []
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(2.0, 4.0))
            self.check_exits()
            if self.feed_done and len(self.kills) >= MIN_KILLS:
                return
            if not victims:  # every process dies in each round, in a random order
                victims = sorted(self.processes)
                rng.shuffle(victims)
            victim = victims.pop()
            if not self.processes[victim].running:  # the feed, once it has ended
                continue
            self.processes[victim].kill()
            self.kills.append(victim)
            if len(self.kills) in REDIS_KILLS_AFTER:
                self.server.kill()
                time.sleep(0.5)
                self.server.restart()
                self.redis_restarts += 1
            self.restart(victim)

    def wait_drained(self) -> None:
        """Until the feed ended and every group has read and acknowledged everything, twice
        in a row a second apart."""
        deadline = time.monotonic() + DRAIN_WITHIN_S
        quiet = 0
        left: dict[str, tuple[int, int]] = {}
        while time.monotonic() < deadline and quiet < 2:
            time.sleep(1.0)
            self.check_exits()
            left = unfinished_groups(self.client, self.keyspace)
            quiet = quiet + 1 if self.feed_done and not left else 0
        assert self.feed_done, "the feed did not finish"
        assert not left, f"groups still holding entries (lag, pending): {left}"

    def stop(self) -> dict[str, int | None]:
        return {name: p.terminate() for name, p in self.processes.items()}


def _signal_rows(envelopes: list[Envelope]) -> dict[str, list[tuple[object, ...]]]:
    """Each symbol's signals in order, without their ids (derived from the ticks' ids)."""
    rows: dict[str, list[tuple[object, ...]]] = defaultdict(list)
    for envelope in envelopes:
        if envelope.event_type != "ai.signal.generated":
            continue
        signal = SignalGenerated.FromString(envelope.payload)
        rows[signal.symbol].append(
            (
                signal.side,
                signal.confidence,
                signal.model_id,
                tuple(sorted(signal.features.items())),
                signal.reference_price,
                signal.generated_at.ToJsonString(),
            )
        )
    return dict(rows)


def test_kills_and_redis_restarts_change_nothing(redis_server: RedisServer, tmp_path: Path) -> None:
    feed = tmp_path / "feed.csv"
    write_feed(feed, TICKS, seed=2026)
    reference = asyncio.run(run_backtest(feed, equity=EQUITY))
    expected_signals = _signal_rows(list(reference.events()))
    assert sum(map(len, expected_signals.values())) > 50  # the feed makes the model talk

    chaos = Chaos(redis_server, feed, tmp_path)
    started = time.monotonic()
    try:
        chaos.start()
        chaos.drive(random.Random(7))
        chaos.wait_drained()
    finally:
        exit_codes = chaos.stop()
    took = time.monotonic() - started
    print(
        f"chaos: {len(chaos.kills)} kills {dict(Counter(chaos.kills))}, "
        f"{chaos.redis_restarts} Redis restarts, unexpected exits {chaos.unexpected_exits}, "
        f"exit codes {exit_codes}, {took:.0f} s"
    )
    assert len(chaos.kills) >= MIN_KILLS
    assert chaos.redis_restarts == len(REDIS_KILLS_AFTER)

    client, keyspace = chaos.client, chaos.keyspace
    ticks = [
        MarketTick.FromString(e.payload) for e in stream_envelopes(client, keyspace, "market.tick")
    ]
    published = Counter((tick.symbol, tick.sequence) for tick in ticks)
    entries = int(client.xlen(keyspace.stream("market.tick")))
    print(f"chaos: {entries} tick entries for {len(ticks)} ticks (the rest: retried publishes)")
    assert len(published) == TICKS, "the feed skipped ticks"
    assert max(published.values()) == 1, "the feed published a tick twice"

    signals = _signal_rows(stream_envelopes(client, keyspace, "ai.signal.generated"))
    for symbol in expected_signals.keys() | signals.keys():
        assert signals.get(symbol) == expected_signals.get(symbol), f"{symbol}'s signals differ"

    approved = [
        SignalApproved.FromString(e.payload)
        for e in stream_envelopes(client, keyspace, "risk.signal.approved")
    ]
    orders = [
        OrderSubmitted.FromString(e.payload)
        for e in stream_envelopes(client, keyspace, "execution.order.submitted")
    ]
    approvals = Counter(a.signal_id for a in approved)
    assert approvals, "no signal was approved: the run shows nothing about orders"
    assert max(approvals.values()) == 1, "a signal was approved twice"
    per_signal = Counter(order.signal_id for order in orders)
    assert max(per_signal.values()) == 1, "a signal was submitted twice"
    assert set(per_signal) == set(approvals), "an approved signal was not submitted once"
    assert len({order.order_id for order in orders}) == len(orders)

    marks = saved_state(client, keyspace, "portfolio")["marks"]
    assert isinstance(marks, dict)
    assert {s: Decimal(p) for s, p in marks.items()} == last_prices(feed)

    assert unfinished_groups(client, keyspace) == {}
    assert dead_letters(client, keyspace) == {}
    client.close()
