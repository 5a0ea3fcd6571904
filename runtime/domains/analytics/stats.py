"""The rolling statistics of one trading day (UTC): trades, win rate, PnL, drawdown, loss."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date
from decimal import Decimal
from typing import Any

_PLACES = Decimal("0.00000001")
_RATE_PLACES = Decimal("0.0001")


@dataclass(slots=True)
class DailyStats:
    day: date
    trades: int = 0
    winning_trades: int = 0
    realized_pnl: Decimal = Decimal(0)
    max_drawdown: Decimal = Decimal(0)  # fraction of peak equity
    daily_loss: Decimal = Decimal(0)  # money lost today, >= 0
    daily_loss_pct: Decimal = Decimal(0)  # of start-of-day equity
    drawdown: Decimal = Decimal(0)  # the latest, fraction of peak equity

    @property
    def win_rate(self) -> Decimal:
        if not self.trades:
            return Decimal(0)
        return (Decimal(self.winning_trades) / Decimal(self.trades)).quantize(_RATE_PLACES)

    def record_trade(self, realized_pnl: Decimal) -> None:
        self.trades += 1
        if realized_pnl > 0:
            self.winning_trades += 1
        self.realized_pnl = (self.realized_pnl + realized_pnl).quantize(_PLACES)

    def record_pnl(self, drawdown: Decimal, daily_pnl: Decimal, equity: Decimal) -> None:
        self.drawdown = drawdown
        self.max_drawdown = max(self.max_drawdown, drawdown)
        self.daily_loss = max(-daily_pnl, Decimal(0)).quantize(_PLACES)
        start_of_day = equity - daily_pnl
        self.daily_loss_pct = (
            (self.daily_loss / start_of_day * 100).quantize(_PLACES)
            if start_of_day > 0
            else Decimal(0)
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: v.isoformat() if isinstance(v, date) else str(v) for k, v in data.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DailyStats:
        return cls(
            day=date.fromisoformat(data["day"]),
            trades=int(data["trades"]),
            winning_trades=int(data["winning_trades"]),
            realized_pnl=Decimal(data["realized_pnl"]),
            max_drawdown=Decimal(data["max_drawdown"]),
            daily_loss=Decimal(data["daily_loss"]),
            daily_loss_pct=Decimal(data["daily_loss_pct"]),
            drawdown=Decimal(data["drawdown"]),
        )
