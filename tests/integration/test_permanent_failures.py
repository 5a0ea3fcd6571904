"""Permanent failures (validation at a domain's door, arithmetic on bad input) are dead-lettered
at once: no retry, no backoff, and the domain goes straight on to the next entry."""

from __future__ import annotations

import time
from decimal import Decimal, InvalidOperation

import pytest
import redis.asyncio as aioredis
from quantum.events.v1.market_pb2 import MarketTick

from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.runner import DomainRunner, RunnerConfig, group_name
from runtime.core.actor import Actor, HandlerContext, handles
from runtime.core.dead_letters import read_dead_letters
from runtime.core.failures import InvalidEvent, is_permanent, reason_of
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from tests.integration.bus_support import running, wait_until
from tests.process.actors import tick


class StrictTicks(Actor):
    """Rejects ticks of symbol BAD at the door; divides by the price of symbol ZERO."""

    name = "strict_ticks"

    def __init__(self) -> None:
        self.handled: list[str] = []

    @handles
    def on_tick(self, payload: MarketTick, ctx: HandlerContext) -> None:
        if payload.symbol == "BAD":
            raise InvalidEvent("tick.symbol", "must be on the allow-list", payload.symbol)
        if payload.symbol == "ZERO":
            Decimal(1) / Decimal(payload.price)  # price "0": DivisionByZero, an ArithmeticError
        if payload.symbol == "NAN":
            Decimal("x")  # decimal.InvalidOperation
        self.handled.append(payload.symbol)


def test_the_classification_rule() -> None:
    assert is_permanent(InvalidEvent("f", "rule"))
    assert is_permanent(InvalidOperation())
    assert is_permanent(OverflowError())
    assert is_permanent(ZeroDivisionError())
    assert not is_permanent(ConnectionError())
    assert not is_permanent(RuntimeError("flaky"))
    assert reason_of(InvalidEvent("f", "rule")) == "invalid"
    assert str(InvalidEvent("fill.quantity", "must be finite and > 0", "NaN")) == (
        "fill.quantity: must be finite and > 0 (got 'NaN')"
    )


@pytest.mark.parametrize("symbol", ["BAD", "ZERO", "NAN"])
async def test_a_permanent_failure_is_dead_lettered_at_once_without_backoff(
    aredis: aioredis.Redis, keyspace: Keyspace, symbol: str
) -> None:
    metrics = RuntimeMetrics()
    bus = EventBus(aredis, keyspace, metrics=metrics)
    await bus.publish(MarketTick(symbol=symbol, price="0", sequence=1))
    await bus.publish(tick("GOOD", 1))
    actor = StrictTicks()
    # A long retry base: were the entry retried even once, the test would take seconds.
    config = RunnerConfig("c1", block_ms=50, retry_base_ms=5_000, max_deliveries=5)
    started = time.monotonic()
    async with running(DomainRunner(actor, aredis, keyspace, bus, config, metrics=metrics)):
        await wait_until(lambda: actor.handled == ["GOOD"])
        elapsed = time.monotonic() - started
    (letter,) = await read_dead_letters(aredis, keyspace, actor.name)
    assert letter.reason == "invalid"
    assert letter.attempts == 1
    assert elapsed < 2.0
    assert metrics.retries.value(actor.name, "market.tick") == 0
    info = await aredis.xpending(keyspace.stream("market.tick"), group_name(keyspace, actor.name))
    assert info["pending"] == 0
    await bus.close()
