"""Generated hostile entries in every input stream of the real domains, on a real Redis.

Five domain actors run through the DomainRunner (as ``quantum run`` hosts them) while a
fixed, derandomized sample of entries is appended to their input streams: payloads with every
field drawn from hostile values, envelopes with broken ids, out-of-range times, unknown types
and versions, undecodable bytes, entries without an envelope. Invariants:

- every entry ends, in every domain that reads it, dead-lettered with a reason that names a
  refused input (never ``handler_failed``: that would be a check missing at a door) or
  handled as valid;
- no runner crashes, and the whole sample is through within the bound;
- no saved state holds NaN, Infinity or a number out of range.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import strategies as st
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.adapters.redis.bus import ENVELOPE_FIELD, EventBus
from runtime.adapters.redis.host import Runtime
from runtime.adapters.redis.operator_store import RedisOperatorStore
from runtime.adapters.redis.policy_store import PolicyStore
from runtime.adapters.redis.runner import RunnerConfig, state_key
from runtime.core.actor import Actor
from runtime.core.envelope import seal
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from runtime.core.registry import EventType, default_registry
from runtime.domains.ai_engine import AiEngine
from runtime.domains.analytics import Analytics
from runtime.domains.execution import Execution, PaperExchange
from runtime.domains.portfolio import Portfolio
from runtime.domains.risk_safety import RiskSafety
from runtime.drain import backlog_cleared
from tests.fuzz.strategies import build, collect, messages, timestamps

CASES = 400
WITHIN_S = 60.0
REFUSED_REASONS = frozenset({"invalid", "undecodable", "unknown_type", "unknown_version"})
CORRUPTIONS = [
    "none", "none", "none", "none", "trace_id", "span_id", "event_type", "schema_version",
    "payload", "bytes", "no_envelope", "occurred_at",
]  # fmt: skip
MAX_STATE_MAGNITUDE = Decimal("1e20")


def _input_types(actors: list[Actor]) -> list[EventType]:
    names = {t.name for actor in actors for t in type(actor).consumes()}
    return sorted(
        (t for t in default_registry() if t.name in names), key=lambda t: (t.name, t.version)
    )


@dataclass(frozen=True)
class Case:
    event_type: EventType
    fields: dict[str, Any]
    corruption: str
    occurred_at: tuple[int, int]
    junk: bytes


def cases(types: list[EventType]) -> list[Case]:
    strategy = st.sampled_from(types).flatmap(
        lambda event_type: st.builds(
            Case,
            st.just(event_type),
            st.one_of(
                messages(event_type.message.DESCRIPTOR, valid=True),
                messages(event_type.message.DESCRIPTOR),
            ),
            st.sampled_from(CORRUPTIONS),
            timestamps(),
            st.binary(max_size=40),
        )
    )
    return collect(strategy, CASES)


def entry(case: Case) -> dict[bytes, bytes]:
    """The stream entry a case stands for."""
    payload = build(case.event_type.message, case.fields)
    key = str(getattr(payload, "symbol", ""))
    envelope: Envelope = seal(payload, producer="fuzz", partition_key=key)
    kind = case.corruption
    if kind == "no_envelope":
        return {b"something": case.junk}
    if kind == "bytes":
        return {ENVELOPE_FIELD: case.junk}
    if kind == "trace_id":
        envelope.trace_id += "\n"
    elif kind == "span_id":
        envelope.span_id = "0" * 16
    elif kind == "event_type":
        envelope.event_type = "no.such.type"
    elif kind == "schema_version":
        envelope.schema_version = 99
    elif kind == "payload":
        envelope.payload = case.junk + b"\xff\xff"
    elif kind == "occurred_at":
        envelope.occurred_at.seconds, envelope.occurred_at.nanos = case.occurred_at
    return {ENVELOPE_FIELD: envelope.SerializeToString()}


def numbers_in(value: Any) -> Iterator[str]:
    """Every string in a JSON document (keys and values)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from numbers_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers_in(item)
    elif isinstance(value, str):
        yield value


def state_problems(domain: str, data: bytes) -> list[str]:
    problems = []
    text = data.decode()
    for word in ("NaN", "Infinity", "inf"):
        if word in text:
            problems.append(f"{domain}: state holds {word}")
    for value in numbers_in(json.loads(text)):
        try:
            number = Decimal(value)
        except InvalidOperation:
            continue
        if not number.is_finite() or abs(number) >= MAX_STATE_MAGNITUDE:
            problems.append(f"{domain}: state holds {value!r}")
    return problems


async def test_hostile_entries_in_every_input_stream(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = PolicyStore(aredis, keyspace, state_dir=tmp_path)
    await store.start()
    actors: list[Actor] = [
        AiEngine(),
        RiskSafety(store),
        Execution(PaperExchange()),
        Portfolio(),
        Analytics(store),
    ]
    sample = cases(_input_types(actors))
    bus = EventBus(aredis, keyspace, producer="fuzz", metrics=RuntimeMetrics())
    config = RunnerConfig(
        consumer_name="fuzz", block_ms=20, max_deliveries=2, retry_base_ms=5, retry_cap_ms=20
    )
    runtime = Runtime(actors, aredis, keyspace, bus, config)
    task = asyncio.create_task(runtime.run())
    injected: dict[str, list[str]] = {}
    try:
        async with aredis.pipeline(transaction=False) as pipe:
            for case in sample:
                pipe.xadd(keyspace.stream(case.event_type.name), entry(case))
            ids = await pipe.execute()
        for case, entry_id in zip(sample, ids, strict=True):
            injected.setdefault(keyspace.stream(case.event_type.name), []).append(entry_id.decode())
        deadline = asyncio.get_running_loop().time() + WITHIN_S
        while not await backlog_cleared(RedisOperatorStore(aredis, keyspace), runtime.runners):
            assert not task.done(), "the runtime stopped"
            assert asyncio.get_running_loop().time() < deadline, "the domains stalled"
            await asyncio.sleep(0.05)
        assert all(runner.running for runner in runtime.runners), "a runner crashed"
    finally:
        runtime.stop()
        await task
        await bus.close()
        await store.stop()

    outcomes: Counter[str] = Counter()
    for actor in actors:
        letters = await aredis.xrange(keyspace.dlq(actor.name))
        dead = {
            (f[b"original_stream"].decode(), f[b"original_entry_id"].decode()): f[
                b"reason"
            ].decode()
            for _, f in letters
        }
        for event_type in type(actor).consumes():
            stream = keyspace.stream(event_type.name)
            for entry_id in injected.get(stream, []):
                reason = dead.get((stream, entry_id))
                outcomes["handled" if reason is None else f"dead-lettered:{reason}"] += 1
        reasons = Counter(dead.values())
        assert set(reasons) <= REFUSED_REASONS, f"{actor.name}: {reasons}"
    problems = []
    for actor in actors:
        data = await aredis.get(state_key(keyspace, actor.name))
        if isinstance(data, bytes):
            problems.extend(state_problems(actor.name, data))
    assert problems == []
    assert outcomes["handled"] > 0
    assert sum(n for k, n in outcomes.items() if k != "handled") > 0
    with capsys.disabled():
        print(f"\nfuzz domains: {len(sample)} cases, outcomes per reading domain: {dict(outcomes)}")
