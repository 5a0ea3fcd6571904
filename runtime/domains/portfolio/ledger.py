"""The account ledger: positions, realised and unrealised PnL, equity and drawdown.

Exact Decimal arithmetic with one rounding rule: money and prices are rounded half-even to
8 places whenever a value is stored, so the same fills and ticks always give the same
numbers. Fees are charged to realised PnL when paid, and to the position they belong to, so
a closed position's realised PnL includes both its opening and closing fees.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from quantum.events.v1.common_pb2 import Side

PLACES = Decimal("0.00000001")


def q(value: Decimal) -> Decimal:
    """Round money, prices and ratios the one way the ledger does."""
    return value.quantize(PLACES, rounding=ROUND_HALF_EVEN)


def _sign(side: Side.ValueType) -> int:
    return 1 if side == Side.SIDE_BUY else -1


@dataclass(slots=True)
class Position:
    side: Side.ValueType
    quantity: Decimal
    entry_price: Decimal
    opened_by: str
    realized_pnl: Decimal = Decimal(0)  # of this position, fees included
    opened_quantity: Decimal = Decimal(0)  # everything ever added
    closed_quantity: Decimal = Decimal(0)
    exit_value: Decimal = Decimal(0)  # sum of closed quantity x exit price


@dataclass(frozen=True, slots=True)
class Opened:
    symbol: str
    side: Side.ValueType
    quantity: Decimal
    entry_price: Decimal
    order_id: str


@dataclass(frozen=True, slots=True)
class Closed:
    symbol: str
    side: Side.ValueType
    quantity: Decimal
    entry_price: Decimal
    exit_price: Decimal
    realized_pnl: Decimal
    order_id: str


Change = Opened | Closed


@dataclass(frozen=True, slots=True)
class Figures:
    """The account's numbers at one moment, as reported in portfolio.pnl.updated."""

    realized_pnl: Decimal
    unrealized_pnl: Decimal
    equity: Decimal
    peak_equity: Decimal
    exposure: Decimal
    drawdown: Decimal
    daily_pnl: Decimal
    open_positions: int


@dataclass(slots=True)
class Ledger:
    starting_equity: Decimal
    realized_pnl: Decimal = Decimal(0)
    positions: dict[str, Position] = field(default_factory=dict)
    marks: dict[str, Decimal] = field(default_factory=dict)
    peak_equity: Decimal = Decimal(0)
    day: date | None = None
    day_start_equity: Decimal = Decimal(0)
    applied_orders: OrderedDict[str, None] = field(default_factory=OrderedDict)
    remember: int = 1_000  # fills remembered by order id, a guard behind the runner's own

    def __post_init__(self) -> None:
        if not self.peak_equity:
            self.peak_equity = self.starting_equity
        if not self.day_start_equity:
            self.day_start_equity = self.starting_equity

    # --- reading -------------------------------------------------------------------------
    @property
    def unrealized_pnl(self) -> Decimal:
        total = Decimal(0)
        for symbol, pos in self.positions.items():
            mark = self.marks.get(symbol, pos.entry_price)
            diff = mark - pos.entry_price
            total += (diff if pos.side == Side.SIDE_BUY else -diff) * pos.quantity
        return q(total)

    @property
    def equity(self) -> Decimal:
        return q(self.starting_equity + self.realized_pnl + self.unrealized_pnl)

    @property
    def exposure(self) -> Decimal:
        return q(
            sum(
                (p.quantity * self.marks.get(s, p.entry_price) for s, p in self.positions.items()),
                Decimal(0),
            )
        )

    @property
    def drawdown(self) -> Decimal:
        """(peak - equity) / peak, a fraction in [0, 1] (0 when the peak is not positive)."""
        return self.figures().drawdown

    @property
    def daily_pnl(self) -> Decimal:
        return q(self.equity - self.day_start_equity)

    def figures(self) -> Figures:
        """Every reported number at once, each computed once (this runs on every report)."""
        unrealized = self.unrealized_pnl
        equity = q(self.starting_equity + self.realized_pnl + unrealized)
        peak = self.peak_equity
        drawdown = Decimal(0)
        if peak > 0:
            drawdown = q(min(max((peak - equity) / peak, Decimal(0)), Decimal(1)))
        return Figures(
            realized_pnl=self.realized_pnl,
            unrealized_pnl=unrealized,
            equity=equity,
            peak_equity=peak,
            exposure=self.exposure,
            drawdown=drawdown,
            daily_pnl=q(equity - self.day_start_equity),
            open_positions=len(self.positions),
        )

    # --- changing ------------------------------------------------------------------------
    def start_day(self, at: datetime) -> None:
        """Roll the trading day (UTC) when ``at`` falls on a new one; call before a change."""
        today = at.date()
        if self.day != today:
            if self.day is not None:
                self.day_start_equity = self.equity
            self.day = today

    def mark(self, symbol: str, price: Decimal) -> bool:
        """Record the latest price; True when it moves an open position."""
        self.marks[symbol] = price
        moved = symbol in self.positions
        if moved:
            self._update_peak()
        return moved

    def already_applied(self, order_id: str) -> bool:
        return order_id in self.applied_orders

    def apply_fill(
        self,
        order_id: str,
        symbol: str,
        side: Side.ValueType,
        quantity: Decimal,
        price: Decimal,
        fee: Decimal,
    ) -> list[Change]:
        """Apply one fill; return the positions it opened and closed, in order."""
        self.applied_orders[order_id] = None
        while len(self.applied_orders) > self.remember:
            self.applied_orders.popitem(last=False)
        self.marks.setdefault(symbol, price)
        changes: list[Change] = []
        pos = self.positions.get(symbol)
        remaining = quantity
        if pos is not None and pos.side != side:
            closing = min(pos.quantity, quantity)
            closing_fee = q(fee * closing / quantity)
            pnl = q(_sign(pos.side) * (price - pos.entry_price) * closing - closing_fee)
            fee -= closing_fee
            pos.realized_pnl += pnl
            self.realized_pnl += pnl
            pos.quantity -= closing
            pos.closed_quantity += closing
            pos.exit_value += closing * price
            remaining -= closing
            if pos.quantity == 0:
                del self.positions[symbol]
                changes.append(
                    Closed(
                        symbol=symbol,
                        side=pos.side,
                        quantity=pos.closed_quantity,
                        entry_price=pos.entry_price,
                        exit_price=q(pos.exit_value / pos.closed_quantity),
                        realized_pnl=q(pos.realized_pnl),
                        order_id=order_id,
                    )
                )
            pos = self.positions.get(symbol)
        if remaining > 0:
            fee = q(fee)
            self.realized_pnl -= fee
            if pos is None:
                pos = Position(side, remaining, price, order_id, -fee, remaining)
                self.positions[symbol] = pos
                changes.append(Opened(symbol, side, remaining, price, order_id))
            else:
                total = pos.quantity + remaining
                pos.entry_price = q((pos.entry_price * pos.quantity + price * remaining) / total)
                pos.quantity = total
                pos.opened_quantity += remaining
                pos.realized_pnl -= fee
        self.realized_pnl = q(self.realized_pnl)
        self._update_peak()
        return changes

    def _update_peak(self) -> None:
        equity = self.equity
        if equity > self.peak_equity:
            self.peak_equity = equity

    # --- snapshots -----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "starting_equity": str(self.starting_equity),
            "realized_pnl": str(self.realized_pnl),
            "peak_equity": str(self.peak_equity),
            "day": self.day.isoformat() if self.day else None,
            "day_start_equity": str(self.day_start_equity),
            "marks": {s: str(p) for s, p in self.marks.items()},
            "positions": {
                s: {
                    "side": int(p.side),
                    "quantity": str(p.quantity),
                    "entry_price": str(p.entry_price),
                    "opened_by": p.opened_by,
                    "realized_pnl": str(p.realized_pnl),
                    "opened_quantity": str(p.opened_quantity),
                    "closed_quantity": str(p.closed_quantity),
                    "exit_value": str(p.exit_value),
                }
                for s, p in self.positions.items()
            },
            "applied_orders": list(self.applied_orders),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ledger:
        return cls(
            starting_equity=Decimal(data["starting_equity"]),
            realized_pnl=Decimal(data["realized_pnl"]),
            peak_equity=Decimal(data["peak_equity"]),
            day=date.fromisoformat(data["day"]) if data["day"] else None,
            day_start_equity=Decimal(data["day_start_equity"]),
            marks={s: Decimal(p) for s, p in data["marks"].items()},
            positions={
                s: Position(
                    side=Side.ValueType(int(p["side"])),
                    quantity=Decimal(p["quantity"]),
                    entry_price=Decimal(p["entry_price"]),
                    opened_by=p["opened_by"],
                    realized_pnl=Decimal(p["realized_pnl"]),
                    opened_quantity=Decimal(p["opened_quantity"]),
                    closed_quantity=Decimal(p["closed_quantity"]),
                    exit_value=Decimal(p["exit_value"]),
                )
                for s, p in data["positions"].items()
            },
            applied_orders=OrderedDict.fromkeys(data["applied_orders"]),
        )
