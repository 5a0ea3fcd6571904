"""Guarantee d: an entry that cannot be opened goes to the dead-letter stream at once."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.adapters.redis.bus import ENVELOPE_FIELD, EventBus
from runtime.adapters.redis.runner import DomainRunner, RunnerConfig, group_name
from runtime.core.dead_letters import read_dead_letters
from runtime.core.envelope import seal
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from tests.integration.bus_support import running, wait_until
from tests.process.actors import TickCounter, tick


def unknown_type() -> bytes:
    envelope = seal(tick("BTC", 1), producer="x")
    envelope.event_type = "market.weather"
    return envelope.SerializeToString()


def unknown_version() -> bytes:
    envelope = seal(tick("BTC", 1), producer="x")
    envelope.schema_version = 9
    return envelope.SerializeToString()


def missing_trace() -> bytes:
    envelope = seal(tick("BTC", 1), producer="x")
    envelope.trace_id = ""
    return envelope.SerializeToString()


def malformed_trace_id() -> bytes:
    envelope = seal(tick("BTC", 1), producer="x")
    envelope.trace_id = "xyz"
    return envelope.SerializeToString()


def malformed_span_id() -> bytes:
    envelope = seal(tick("BTC", 1), producer="x")
    envelope.span_id = "0" * 16
    return envelope.SerializeToString()


def bad_payload() -> bytes:
    envelope = seal(tick("BTC", 1), producer="x")
    envelope.payload = b"\xff\xff\xff"
    return envelope.SerializeToString()


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({ENVELOPE_FIELD: b"\xff\x00 not protobuf"}, "undecodable"),
        ({ENVELOPE_FIELD: unknown_type()}, "unknown_type"),
        ({ENVELOPE_FIELD: unknown_version()}, "unknown_version"),
        ({ENVELOPE_FIELD: missing_trace()}, "invalid"),
        ({ENVELOPE_FIELD: malformed_trace_id()}, "invalid"),
        ({ENVELOPE_FIELD: malformed_span_id()}, "invalid"),
        ({ENVELOPE_FIELD: bad_payload()}, "undecodable"),
        ({b"something": b"else"}, "invalid"),
    ],
    ids=[
        "garbage",
        "unknown-type",
        "unknown-version",
        "missing-field",
        "malformed-trace-id",
        "zero-span-id",
        "bad-payload",
        "no-env",
    ],
)
async def test_an_entry_that_cannot_be_opened_is_dead_lettered_at_once_and_the_actor_goes_on(
    aredis: aioredis.Redis, keyspace: Keyspace, fields: dict[bytes, bytes], reason: str
) -> None:
    metrics = RuntimeMetrics()
    bus = EventBus(aredis, keyspace, metrics=metrics)
    stream = keyspace.stream("market.tick")
    bad_id = (await aredis.xadd(stream, fields)).decode()  # type: ignore[arg-type]
    await bus.publish(tick("BTC", 1))
    actor = TickCounter()
    async with running(
        DomainRunner(actor, aredis, keyspace, bus, RunnerConfig("c1", block_ms=50), metrics=metrics)
    ):
        await wait_until(lambda: actor.counts.get("BTC") == 1)

    (letter,) = await read_dead_letters(aredis, keyspace, actor.name)
    assert letter.reason == reason
    assert letter.attempts == 1
    assert letter.original_stream == stream
    assert letter.original_entry_id == bad_id
    assert letter.payload == fields.get(ENVELOPE_FIELD, b"")
    assert letter.error_type
    assert letter.error_message
    assert metrics.dead_letters.value(actor.name, reason) == 1
    info = await aredis.xpending(stream, group_name(keyspace, actor.name))
    assert info["pending"] == 0
    await bus.close()


async def test_a_dead_letter_names_the_event_when_the_envelope_decoded(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    data = unknown_version()
    await aredis.xadd(keyspace.stream("market.tick"), {ENVELOPE_FIELD: data})
    await aredis.xadd(
        keyspace.stream("market.tick"),
        {ENVELOPE_FIELD: seal(tick("B", 1), producer="x").SerializeToString()},
    )
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    actor = TickCounter()
    async with running(DomainRunner(actor, aredis, keyspace, bus, RunnerConfig("c1", block_ms=50))):
        await wait_until(lambda: actor.counts.get("B") == 1)
    (letter,) = await read_dead_letters(aredis, keyspace, actor.name)
    assert letter.event_id == Envelope.FromString(data).event_id
    assert letter.event_type == "market.tick"
    await bus.close()
