"""Test actors for the bus and runner tests: small, observable, and with state to keep."""

from __future__ import annotations

import json

from quantum.events.v1.market_pb2 import MarketTick
from quantum.events.v1.portfolio_pb2 import PnlUpdated

from runtime.core.actor import Actor, HandlerContext, handles


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
