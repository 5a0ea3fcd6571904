"""Ordering of one runner: entries of several streams are handled in time (entry id) order."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from quantum.events.v1.market_pb2 import MarketTick
from quantum.events.v1.portfolio_pb2 import PnlUpdated

from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.runner import DomainRunner, RunnerConfig
from runtime.core.actor import Actor, HandlerContext, handles
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from tests.integration.bus_support import running, wait_until
from tests.process.actors import tick


class TwoStreams(Actor):
    """Records the order in which it sees ticks and PnL updates (two streams)."""

    name = "two_streams"

    def __init__(self) -> None:
        self.seen: list[str] = []

    @handles
    def on_tick(self, event: MarketTick, ctx: HandlerContext) -> None:
        self.seen.append(f"tick-{event.sequence}")

    @handles
    def on_pnl(self, event: PnlUpdated, ctx: HandlerContext) -> None:
        self.seen.append(f"pnl-{event.realized_pnl}")


async def test_entries_of_two_streams_are_handled_in_entry_id_order(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    published: list[str] = []
    # Published one by one before the runner starts, so that one read returns both streams;
    # a pause between them, as entry ids of two streams within one millisecond are a tie.
    for i in range(1, 6):
        await bus.publish(PnlUpdated(symbol="BTC", realized_pnl=str(i)))
        published.append(f"pnl-{i}")
        await asyncio.sleep(0.002)
        await bus.publish(tick("BTC", i))
        published.append(f"tick-{i}")
        await asyncio.sleep(0.002)
    actor = TwoStreams()
    config = RunnerConfig("c1", block_ms=50)
    async with running(DomainRunner(actor, aredis, keyspace, bus, config)):
        await wait_until(lambda: len(actor.seen) == len(published))
    assert actor.seen == published
    await bus.close()
