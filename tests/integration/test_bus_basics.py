"""The event bus and the domain runner, end to end against a real Redis."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
import structlog
from quantum.events.v1.envelope_pb2 import Envelope
from quantum.events.v1.market_pb2 import MarketTick

from runtime.adapters.redis.bus import ENVELOPE_FIELD, EventBus
from runtime.adapters.redis.runner import DomainRunner, RunnerConfig
from runtime.core import tracing
from runtime.core.keys import Keyspace
from runtime.core.logs import configure_logging
from runtime.core.metrics import RuntimeMetrics
from runtime.core.trace_index import read_trace
from tests.integration.bus_support import running, wait_until
from tests.process.actors import LoggingTicks, TickCounter, tick


@pytest.fixture
async def bus(aredis: aioredis.Redis, keyspace: Keyspace) -> AsyncIterator[EventBus]:
    bus = EventBus(aredis, keyspace, producer="market_data", metrics=RuntimeMetrics())
    yield bus
    await bus.close()


async def test_publish_appends_one_envelope_field_to_the_type_stream(
    bus: EventBus, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    envelope = await bus.publish(tick("BTC", 1), partition_key="BTC")

    entries = await aredis.xrange(keyspace.stream("market.tick"))
    assert len(entries) == 1
    _, fields = entries[0]
    assert list(fields) == [ENVELOPE_FIELD]
    stored = Envelope.FromString(fields[ENVELOPE_FIELD])
    assert stored == envelope
    assert stored.producer == "market_data"
    assert stored.partition_key == "BTC"
    assert bus.metrics.published.value("market.tick") == 1


async def test_concurrent_publishes_keep_call_order_and_all_land(
    bus: EventBus, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    envelopes = await asyncio.gather(*(bus.publish(tick("ETH", i)) for i in range(1, 501)))

    entries = await aredis.xrange(keyspace.stream("market.tick"))
    ids = [Envelope.FromString(f[ENVELOPE_FIELD]).event_id for _, f in entries]
    assert ids == [e.event_id for e in envelopes]


async def test_publish_inside_a_trace_carries_it_and_leaves_the_index_to_the_consumers(
    bus: EventBus, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    with tracing.span() as ctx:
        first = await bus.publish(tick("BTC", 1))
        second = await bus.publish(tick("BTC", 2))

    assert first.trace_id == second.trace_id == ctx.trace_id
    assert first.parent_span_id == ctx.span_id
    # The trace index is written by the batch commit of the consumer an event causes outputs
    # in (tests/integration/test_trace_index_commit.py), never on the publish path.
    assert await aredis.exists(keyspace.trace(ctx.trace_id)) == 0


async def test_runner_handles_published_events_in_order_and_acknowledges_them(
    bus: EventBus, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    actor = TickCounter()
    runner = DomainRunner(
        actor, aredis, keyspace, bus, RunnerConfig(consumer_name="c1", block_ms=50)
    )
    async with running(runner):
        await bus.publish_many([tick("BTC", i) for i in range(1, 301)], partition_key="BTC")
        await wait_until(lambda: actor.counts.get("BTC") == 300)
    stream = keyspace.stream("market.tick")
    info = await aredis.xinfo_groups(stream)
    assert info[0]["name"] == b"tick_counter"
    assert info[0]["pending"] == 0
    assert actor.out_of_order == 0
    outputs = await aredis.xrange(keyspace.stream("portfolio.pnl.updated"))
    assert len(outputs) == 300


async def test_outputs_continue_the_inputs_trace_with_causation(
    bus: EventBus, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    actor = TickCounter()
    runner = DomainRunner(
        actor, aredis, keyspace, bus, RunnerConfig(consumer_name="c1", block_ms=50)
    )
    async with running(runner):
        source = await bus.publish(tick("BTC", 1), partition_key="BTC")
        await wait_until(lambda: actor.counts.get("BTC") == 1)

    ((_, fields),) = await aredis.xrange(keyspace.stream("portfolio.pnl.updated"))
    output = Envelope.FromString(fields[ENVELOPE_FIELD])
    assert output.trace_id == source.trace_id
    assert output.parent_span_id == source.span_id
    assert output.causation_id == source.event_id
    assert output.producer == "tick_counter"
    trace = await read_trace(aredis, keyspace, source.trace_id)
    assert [e.event_id for e in trace] == sorted([source.event_id, output.event_id])


async def test_runner_state_snapshot_is_restored_by_the_next_runner(
    bus: EventBus, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    first = TickCounter()
    config = RunnerConfig(consumer_name="c1", block_ms=50)
    async with running(DomainRunner(first, aredis, keyspace, bus, config)):
        await bus.publish_many([tick("SOL", i) for i in range(1, 11)])
        await wait_until(lambda: first.counts.get("SOL") == 10)

    second = TickCounter()
    async with running(DomainRunner(second, aredis, keyspace, bus, config)):
        await bus.publish(tick("SOL", 11))
        await wait_until(lambda: second.counts.get("SOL") == 11)
    assert second.out_of_order == 0


async def test_heartbeat_names_the_consumer(
    bus: EventBus, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    runner = DomainRunner(
        TickCounter(), aredis, keyspace, bus, RunnerConfig(consumer_name="c7", block_ms=50)
    )
    async with running(runner):
        for _ in range(200):
            if await aredis.hget(keyspace.heartbeat("tick_counter"), "c7"):
                break
            await asyncio.sleep(0.01)
    assert int(await aredis.hget(keyspace.heartbeat("tick_counter"), "c7")) > 0


def test_market_tick_is_what_the_test_actor_takes() -> None:
    assert TickCounter.consumes()[0].message is MarketTick


async def test_handler_log_lines_carry_the_events_trace_id(
    bus: EventBus, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    buffer = io.BytesIO()
    configure_logging("INFO", stream=buffer)
    try:
        actor = LoggingTicks()
        runner = DomainRunner(actor, aredis, keyspace, bus, RunnerConfig("c1", block_ms=50))
        async with running(runner):
            first = await bus.publish(tick("BTC", 1))
            second = await bus.publish(tick("BTC", 2))
            await wait_until(lambda: actor.count == 2)
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    handled = [line for line in lines if line["event"] == "tick_handled"]
    assert [(line["sequence"], line["trace_id"], line["span_id"]) for line in handled] == [
        (1, first.trace_id, first.span_id),
        (2, second.trace_id, second.span_id),
    ]


async def test_a_cancelled_publisher_does_not_break_flush_and_its_event_still_lands(
    bus: EventBus, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    task = asyncio.create_task(bus.publish(tick("BTC", 1)))
    await asyncio.sleep(0)  # queued, not yet sent
    task.cancel()
    await bus.flush()
    assert await aredis.xlen(keyspace.stream("market.tick")) == 1


async def test_heartbeat_outlives_an_error_reply(
    bus: EventBus, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    key = keyspace.heartbeat("tick_counter")
    await aredis.set(key, "not a hash")  # every HSET now gets a WRONGTYPE error reply
    actor = TickCounter()
    config = RunnerConfig(consumer_name="c8", block_ms=50, heartbeat_interval_s=0.02)
    async with running(DomainRunner(actor, aredis, keyspace, bus, config)):
        await bus.publish(tick("BTC", 1))
        await wait_until(lambda: actor.counts.get("BTC") == 1)
        await asyncio.sleep(0.1)  # several heartbeats have met the error
        await aredis.delete(key)
        for _ in range(500):
            if await aredis.hget(key, "c8"):
                break
            await asyncio.sleep(0.01)
    assert int(await aredis.hget(key, "c8")) > 0
