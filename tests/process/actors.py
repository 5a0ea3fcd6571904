"""Test actors for the bus and runner tests: small, observable, and with state to keep."""

from __future__ import annotations

import asyncio
import json

from quantum.events.v1.market_pb2 import MarketTick
from quantum.events.v1.portfolio_pb2 import PnlUpdated

from runtime.core.actor import Actor, HandlerContext, handles
from runtime.core.logs import get_logger


class TickCounter(Actor):
    """Counts ticks per symbol and checks they arrive in sequence order; echoes each one.

    Its state (counts, last sequence, order violations) is snapshotted, so a restarted
    worker carries on where the last acknowledgement left it.
    """

    name = "tick_counter"

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.last_seq: dict[str, int] = {}
        self.out_of_order = 0
        self.seen: list[str] = []

    @handles
    def on_tick(self, tick: MarketTick, ctx: HandlerContext) -> None:
        last = self.last_seq.get(tick.symbol, 0)
        if tick.sequence != last + 1:
            self.out_of_order += 1
        self.last_seq[tick.symbol] = tick.sequence
        self.counts[tick.symbol] = self.counts.get(tick.symbol, 0) + 1
        self.seen.append(ctx.event_id)
        ctx.emit(PnlUpdated(symbol=tick.symbol, realized_pnl=str(tick.sequence)))

    def snapshot_state(self) -> bytes | None:
        return json.dumps(
            {"counts": self.counts, "last_seq": self.last_seq, "ooo": self.out_of_order}
        ).encode()

    def restore_state(self, data: bytes) -> None:
        state = json.loads(data)
        self.counts = state["counts"]
        self.last_seq = state["last_seq"]
        self.out_of_order = state["ooo"]


def tick(symbol: str, sequence: int, padding: int = 0) -> MarketTick:
    return MarketTick(
        symbol=symbol, price="100.25", sequence=sequence, source="test" + "x" * padding
    )


class FlakyTicks(Actor):
    """Fails on the sequences in ``fail_times`` that many times, then handles them."""

    name = "flaky_ticks"

    def __init__(self, fail_times: dict[int, int] | None = None) -> None:
        self.fail_times = dict(fail_times or {})
        self.calls: dict[int, int] = {}
        self.handled: list[int] = []

    @handles
    def on_tick(self, tick: MarketTick, ctx: HandlerContext) -> None:
        self.calls[tick.sequence] = self.calls.get(tick.sequence, 0) + 1
        if self.fail_times.get(tick.sequence, 0) > 0:
            self.fail_times[tick.sequence] -= 1
            raise RuntimeError(f"exchange unavailable for sequence {tick.sequence}")
        self.handled.append(tick.sequence)
        ctx.emit(PnlUpdated(symbol=tick.symbol, realized_pnl=str(tick.sequence)))


class SlowTicks(Actor):
    """Takes ``delay_s`` per tick (asynchronously), recording who handled what."""

    name = "slow_ticks"

    def __init__(self, delay_s: float, log: list[tuple[str, int]], who: str) -> None:
        self.delay_s = delay_s
        self.log = log
        self.who = who

    @handles
    async def on_tick(self, tick: MarketTick, ctx: HandlerContext) -> None:
        await asyncio.sleep(self.delay_s)
        self.log.append((self.who, tick.sequence))


class LoggingTicks(Actor):
    """Logs one line per tick, with nothing about traces in its call."""

    name = "logging_ticks"

    def __init__(self) -> None:
        self.count = 0

    @handles
    def on_tick(self, tick: MarketTick, ctx: HandlerContext) -> None:
        get_logger("tests.logging_ticks").info("tick_handled", sequence=tick.sequence)
        self.count += 1
