"""The trace index is written by the consumers' batch commits: every input that caused
outputs (when it is the root of its trace) and those outputs, so a whole chain is found in
one read; an event that caused nothing is not indexed (ReadEvents finds it)."""

from __future__ import annotations

import redis.asyncio as aioredis

from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.runner import DomainRunner, RunnerConfig
from runtime.core import tracing
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from runtime.core.trace_index import read_trace
from tests.integration.bus_support import running, wait_until
from tests.process.actors import TickCounter, tick


async def test_a_root_that_caused_outputs_is_indexed_with_them_in_one_read(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    with tracing.span() as ctx:
        root = await bus.publish(tick("BTC", 1))
    actor = TickCounter()  # emits one pnl.updated per tick
    async with running(DomainRunner(actor, aredis, keyspace, bus, RunnerConfig("c1", block_ms=20))):
        await wait_until(lambda: actor.counts.get("BTC") == 1)

    # An output's id shares its cause's time prefix, so id order may put it first: the
    # control plane orders a trace by causation (tests/control_plane/test_trace_service.py).
    by_type = {e.event_type: e for e in await read_trace(aredis, keyspace, ctx.trace_id)}
    assert set(by_type) == {"market.tick", "portfolio.pnl.updated"}
    assert by_type["market.tick"].event_id == root.event_id
    assert by_type["portfolio.pnl.updated"].causation_id == root.event_id
    assert by_type["portfolio.pnl.updated"].parent_span_id == root.span_id
    assert await aredis.ttl(keyspace.trace(ctx.trace_id)) > 0
    await bus.close()


async def test_an_input_with_a_cause_is_not_indexed_again_by_its_consumer(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    with tracing.span() as ctx:
        # As a runner's output would be: it has a cause, so that runner's commit indexed it.
        await bus.publish(tick("ETH", 1), causation_id="01J0000000000000000000000")
    actor = TickCounter()
    async with running(DomainRunner(actor, aredis, keyspace, bus, RunnerConfig("c1", block_ms=20))):
        await wait_until(lambda: actor.counts.get("ETH") == 1)

    chain = await read_trace(aredis, keyspace, ctx.trace_id)
    assert [e.event_type for e in chain] == ["portfolio.pnl.updated"]
    assert await aredis.llen(keyspace.trace(ctx.trace_id)) == 1
    await bus.close()
