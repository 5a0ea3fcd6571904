"""risk_safety's view of the account: equity, open holdings, marks, daily PnL, order times.

Portfolio events are the truth; approvals are booked at once as if filled, so that a second
signal arriving before the first fill is confirmed still sees the first order's exposure.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from quantum.events.v1.common_pb2 import Side

_RATE_WINDOW = timedelta(seconds=1)


@dataclass(slots=True)
class Holding:
    side: Side.ValueType
    quantity: Decimal


class Book:
    """The numbers the pre-trade checks need, kept current by events."""

    def __init__(self, starting_equity: Decimal) -> None:
        self.equity = starting_equity
        self.daily_pnl = Decimal(0)
        self.pnl_day: date | None = None  # the UTC day daily_pnl belongs to
        self.holdings: dict[str, Holding] = {}
        self.marks: dict[str, Decimal] = {}
        self.order_times: deque[datetime] = deque()

    @property
    def open_positions(self) -> int:
        return len(self.holdings)

    def notional(self, symbol: str) -> Decimal:
        holding = self.holdings.get(symbol)
        if holding is None:
            return Decimal(0)
        return holding.quantity * self.marks.get(symbol, Decimal(0))

    @property
    def exposure(self) -> Decimal:
        """Gross exposure: the sum of |quantity x mark| over open holdings."""
        return sum((self.notional(symbol) for symbol in self.holdings), Decimal(0))

    def record_pnl(self, equity: Decimal, daily_pnl: Decimal, at: datetime) -> None:
        self.equity = equity
        self.daily_pnl = daily_pnl
        self.pnl_day = at.date()

    def daily_loss_pct(self, now: datetime) -> Decimal:
        """Today's loss as a percent of start-of-day equity (0 when not losing, or when the
        last PnL report was of another day: a new day starts with a clean slate)."""
        start_of_day = self.equity - self.daily_pnl
        if self.pnl_day != now.date() or self.daily_pnl >= 0 or start_of_day <= 0:
            return Decimal(0)
        return -self.daily_pnl / start_of_day * 100

    def orders_in_window(self, now: datetime) -> int:
        """Orders approved in the second up to ``now`` (event time, so replays agree)."""
        while self.order_times and self.order_times[0] <= now - _RATE_WINDOW:
            self.order_times.popleft()
        return len(self.order_times)

    def book_order(
        self, symbol: str, side: Side.ValueType, quantity: Decimal, at: datetime
    ) -> None:
        """Record an approved order as if it had filled."""
        self.order_times.append(at)
        holding = self.holdings.get(symbol)
        if holding is None:
            self.holdings[symbol] = Holding(side, quantity)
        elif holding.side == side:
            holding.quantity += quantity
        elif quantity >= holding.quantity:
            del self.holdings[symbol]
        else:
            holding.quantity -= quantity

    def position_opened(self, symbol: str, side: Side.ValueType, quantity: Decimal) -> None:
        holding = self.holdings.get(symbol)
        if holding is None or holding.side != side:
            self.holdings[symbol] = Holding(side, quantity)
        else:  # already booked at approval; keep the larger (it may include later adds)
            holding.quantity = max(holding.quantity, quantity)

    def position_closed(self, symbol: str, side: Side.ValueType) -> None:
        holding = self.holdings.get(symbol)
        if holding is not None and holding.side == side:
            del self.holdings[symbol]

    def to_json(self) -> dict[str, Any]:
        return {
            "equity": str(self.equity),
            "daily_pnl": str(self.daily_pnl),
            "pnl_day": self.pnl_day.isoformat() if self.pnl_day else None,
            "holdings": {s: [int(h.side), str(h.quantity)] for s, h in self.holdings.items()},
            "marks": {s: str(p) for s, p in self.marks.items()},
            "order_times": [t.isoformat() for t in self.order_times],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Book:
        book = cls(Decimal(data["equity"]))
        book.daily_pnl = Decimal(data["daily_pnl"])
        book.pnl_day = date.fromisoformat(data["pnl_day"]) if data.get("pnl_day") else None
        book.holdings = {
            s: Holding(Side.ValueType(int(side)), Decimal(q))
            for s, (side, q) in data["holdings"].items()
        }
        book.marks = {s: Decimal(p) for s, p in data["marks"].items()}
        book.order_times = deque(datetime.fromisoformat(t) for t in data["order_times"])
        return book
