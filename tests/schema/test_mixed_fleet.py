"""A mixed fleet on a real Redis: one producer emits v1, another v2 of ai.signal.generated;
a consumer written against v2 and one still on v1 both read every signal in their version."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis
from quantum.events.v1 import ai_pb2 as ai_v1
from quantum.events.v1.common_pb2 import SIDE_BUY
from quantum.events.v1.envelope_pb2 import Envelope
from quantum.events.v1.market_pb2 import MarketTick
from quantum.events.v2 import ai_pb2 as ai_v2

from runtime.adapters.redis.bus import ENVELOPE_FIELD, EventBus
from runtime.adapters.redis.runner import DomainRunner, RunnerConfig
from runtime.core.actor import Actor, HandlerContext, handles
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics


class Signaler(Actor):
    """Domain code that constructs v2 only; its deployment decides the wire version."""

    name = "ai_engine"

    @handles
    def on_tick(self, tick: MarketTick, ctx: HandlerContext) -> None:
        ctx.emit(
            ai_v2.SignalGenerated(
                signal_id=f"{self.name}:{tick.sequence}",
                symbol=tick.symbol,
                side=SIDE_BUY,
                reference_price=tick.price,
                confidence=ai_v2.Confidence(
                    value="0.8",
                    model_id="ema-crossover/2",
                    calibration_method=ai_v2.CALIBRATION_METHOD_PLATT,
                ),
            )
        )


class OldFleetSignaler(Signaler):
    name = "ai_engine_old_fleet"


class NewFleetSignaler(Signaler):
    name = "ai_engine_new_fleet"


class RiskOnV2(Actor):
    name = "risk_safety"

    def __init__(self) -> None:
        self.signals: list[ai_v2.SignalGenerated] = []

    @handles
    def on_signal(self, signal: ai_v2.SignalGenerated, ctx: HandlerContext) -> None:
        self.signals.append(signal)


class AuditOnV1(Actor):
    name = "audit"

    def __init__(self) -> None:
        self.signals: list[ai_v1.SignalGenerated] = []

    @handles
    def on_signal(self, signal: ai_v1.SignalGenerated, ctx: HandlerContext) -> None:
        self.signals.append(signal)


async def _wait_until(condition: Callable[[], bool], within_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def _fleet(
    aredis: aioredis.Redis, keyspace: Keyspace, actors: list[Actor]
) -> AsyncIterator[EventBus]:
    """Each actor with its own bus and runner, as if in its own process; yields a feed bus."""
    buses = [
        EventBus(aredis, keyspace, producer=actor.name, metrics=RuntimeMetrics())
        for actor in actors
    ]
    runners = [
        DomainRunner(
            actor,
            aredis,
            keyspace,
            bus,
            RunnerConfig(consumer_name=f"{actor.name}-1", block_ms=50),
            metrics=RuntimeMetrics(),
        )
        for actor, bus in zip(actors, buses, strict=True)
    ]
    tasks = [asyncio.create_task(runner.run()) for runner in runners]
    feed = EventBus(aredis, keyspace, producer="market_data", metrics=RuntimeMetrics())
    try:
        yield feed
    finally:
        await feed.close()
        for runner in runners:
            await runner.stop()
        await asyncio.gather(*tasks)
        for bus in buses:
            await bus.close()


async def test_v1_and_v2_producers_feed_v2_and_v1_consumers(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    old_fleet = OldFleetSignaler()
    old_fleet.emit_versions = {"ai.signal.generated": 1}  # QUANTUM_EMIT_VERSIONS in production
    risk, audit = RiskOnV2(), AuditOnV1()

    async with _fleet(aredis, keyspace, [old_fleet, NewFleetSignaler(), risk, audit]) as feed:
        await feed.publish_many(
            [MarketTick(symbol="BTC-USD", price="100.5", sequence=i) for i in range(1, 11)],
            partition_key="BTC-USD",
        )
        await _wait_until(lambda: len(risk.signals) == 20 and len(audit.signals) == 20)

    stored = [
        Envelope.FromString(fields[ENVELOPE_FIELD])
        for _, fields in await aredis.xrange(keyspace.stream("ai.signal.generated"))
    ]
    assert {(e.producer, e.schema_version) for e in stored} == {
        ("ai_engine_old_fleet", 1),
        ("ai_engine_new_fleet", 2),
    }
    assert all(type(s) is ai_v2.SignalGenerated for s in risk.signals)
    by_fleet = {s.signal_id.rsplit(":", 1)[0] for s in risk.signals}
    assert by_fleet == {"ai_engine_old_fleet", "ai_engine_new_fleet"}
    for signal in risk.signals:
        assert (signal.confidence.value, signal.confidence.model_id) == ("0.8", "ema-crossover/2")
        # v1 cannot carry the calibration, so the old fleet's signals arrive without it.
        expected = (
            ai_v2.CALIBRATION_METHOD_UNSPECIFIED
            if signal.signal_id.startswith("ai_engine_old_fleet")
            else ai_v2.CALIBRATION_METHOD_PLATT
        )
        assert signal.confidence.calibration_method == expected
    assert all(type(s) is ai_v1.SignalGenerated for s in audit.signals)
    assert {s.confidence for s in audit.signals} == {"0.8"}
    for group in ("risk_safety", "audit"):
        info = await aredis.xinfo_groups(keyspace.stream("ai.signal.generated"))
        assert any(g["name"].decode() == keyspace.group(group) and g["pending"] == 0 for g in info)
