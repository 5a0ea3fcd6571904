"""The portfolio actor: fills and ticks in; positions opened and closed and PnL out."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal

from google.protobuf.timestamp_pb2 import Timestamp
from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.market_pb2 import MarketTick
from quantum.events.v1.portfolio_pb2 import PnlUpdated, PositionClosed, PositionOpened
from quantum.events.v2.execution_pb2 import OrderFilled, PartialFill

from runtime.core import event_checks as door
from runtime.core.actor import Actor, HandlerContext, handles
from runtime.core.failures import InvalidEvent
from runtime.domains.portfolio.ledger import Closed, Ledger, Opened


class Portfolio(Actor):
    """Keeps the ledger and reports every change to it.

    Fills are read at schema v2 (an order filled by partial fills; v1 fills arrive upcast as
    one partial fill). Every fill yields a PnlUpdated; a tick yields one only when it moves an
    open position, and then at most once per ``tick_pnl_interval`` of event time (default
    100 ms: a fast feed would otherwise double the event load for numbers that barely move;
    the peak equity is still tracked on every tick).
    """

    name = "portfolio"

    def __init__(
        self,
        *,
        starting_equity: Decimal = Decimal("100000"),
        tick_pnl_interval: timedelta = timedelta(milliseconds=100),
    ) -> None:
        self.ledger = Ledger(starting_equity=starting_equity)
        self.tick_pnl_interval = tick_pnl_interval
        self._last_tick_pnl: datetime | None = None

    @handles
    def on_fill(self, fill: OrderFilled, ctx: HandlerContext) -> None:
        now = door.occurred_at(ctx.envelope)
        door.identifier(fill.order_id, "order_id")
        if self.ledger.already_applied(fill.order_id):
            return  # one order fills once: a redelivered fill changes nothing
        door.symbol(fill.symbol)
        door.side(fill.side)
        if not fill.fills:
            raise InvalidEvent("fills", "must hold at least one partial fill", fill.order_id)
        # Every part is checked before any is applied: the ledger marks the order applied on
        # its first part, so a bad later part must not leave it half-applied. All or nothing.
        parts = [_fill_numbers(index, part) for index, part in enumerate(fill.fills)]
        self.ledger.start_day(now)
        at = ctx.envelope.occurred_at
        for quantity, price, fee in parts:
            self._apply(fill.order_id, fill.symbol, fill.side, quantity, price, fee, at, ctx)
        self._emit_pnl(fill.symbol, ctx)

    def _apply(
        self,
        order_id: str,
        symbol: str,
        side: Side.ValueType,
        quantity: Decimal,
        price: Decimal,
        fee: Decimal,
        at: Timestamp,
        ctx: HandlerContext,
    ) -> None:
        for change in self.ledger.apply_fill(order_id, symbol, side, quantity, price, fee):
            if isinstance(change, Opened):
                ctx.emit(
                    PositionOpened(
                        symbol=change.symbol,
                        side=change.side,
                        quantity=f"{change.quantity:f}",
                        entry_price=f"{change.entry_price:f}",
                        order_id=change.order_id,
                        opened_at=at,
                    ),
                    partition_key=change.symbol,
                )
            elif isinstance(change, Closed):
                ctx.emit(
                    PositionClosed(
                        symbol=change.symbol,
                        side=change.side,
                        quantity=f"{change.quantity:f}",
                        entry_price=f"{change.entry_price:f}",
                        exit_price=f"{change.exit_price:f}",
                        realized_pnl=f"{change.realized_pnl:f}",
                        order_id=change.order_id,
                        closed_at=at,
                    ),
                    partition_key=change.symbol,
                )

    @handles
    def on_tick(self, tick: MarketTick, ctx: HandlerContext) -> None:
        now = door.occurred_at(ctx.envelope)
        price = door.tick(tick)
        self.ledger.start_day(now)
        if not self.ledger.mark(tick.symbol, price):
            return
        if (
            self.tick_pnl_interval
            and self._last_tick_pnl is not None
            and now - self._last_tick_pnl < self.tick_pnl_interval
        ):
            return
        self._last_tick_pnl = now
        self._emit_pnl(tick.symbol, ctx)

    def pnl(self, symbol: str, at: Timestamp) -> PnlUpdated:
        """The account's numbers now, as the event that reports them."""
        figures = self.ledger.figures()
        return PnlUpdated(
            realized_pnl=f"{figures.realized_pnl:f}",
            unrealized_pnl=f"{figures.unrealized_pnl:f}",
            equity=f"{figures.equity:f}",
            peak_equity=f"{figures.peak_equity:f}",
            exposure=f"{figures.exposure:f}",
            drawdown=f"{figures.drawdown:f}",
            daily_pnl=f"{figures.daily_pnl:f}",
            open_positions=figures.open_positions,
            symbol=symbol,
            as_of=at,
        )

    def _emit_pnl(self, symbol: str, ctx: HandlerContext) -> None:
        ctx.emit(self.pnl(symbol, ctx.envelope.occurred_at), partition_key=symbol)

    def snapshot_state(self) -> bytes:
        return json.dumps(self.ledger.to_json(), sort_keys=True).encode()

    def restore_state(self, data: bytes) -> None:
        self.ledger = Ledger.from_json(json.loads(data))


def _fill_numbers(index: int, part: PartialFill) -> tuple[Decimal, Decimal, Decimal]:
    """One partial fill's quantity, price and fee (a rebate may be negative)."""
    where = f"fills[{index}]"
    quantity = door.positive(part.quantity, f"{where}.quantity")
    price = door.positive(part.price, f"{where}.price")
    fee = door.money(part.fee, f"{where}.fee") if part.fee else Decimal(0)
    door.optional_time(part, "filled_at")
    return quantity, price, fee
