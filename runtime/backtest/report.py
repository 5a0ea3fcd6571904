"""What a trader reads after a backtest: trades, win rate, profit factor, Sharpe and Sortino,
max drawdown, exposure, per symbol; and the trades as CSV.

Built from the run's event log (positions opened and closed, PnL updates, signals,
decisions, fills) and the portfolio's final ledger. The statistics are defined in
``runtime.backtest.stats``.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from quantum.events.v1 import portfolio_pb2, risk_pb2
from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.backtest.stats import (
    Drawdown,
    EquityPoint,
    Trade,
    average_exposure,
    bar_returns,
    max_drawdown,
    periods_per_year,
    profit_factor,
    sharpe,
    sortino,
    time_in_market,
    win_rate,
)

TRADE_COLUMNS = (
    "symbol",
    "side",
    "quantity",
    "entry_price",
    "exit_price",
    "opened_at",
    "closed_at",
    "pnl",
    "open_order_id",
    "close_order_id",
)


@dataclass(frozen=True, slots=True)
class SymbolReport:
    symbol: str
    ticks: int
    trades: int
    win_rate: Decimal | None
    profit_factor: Decimal | None
    net_pnl: Decimal
    time_in_market: Decimal


@dataclass
class BacktestReport:
    """The figures of one backtest (see the README's Backtesting section)."""

    feed: str
    start: datetime
    end: datetime
    bar: timedelta
    starting_equity: Decimal
    final_equity: Decimal
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    trades: list[Trade]
    open_at_end: int
    equity: list[EquityPoint]
    returns: list[float]
    sharpe: float | None
    sortino: float | None
    drawdown: Drawdown
    time_in_market: Decimal
    average_exposure: Decimal
    per_symbol: list[SymbolReport]
    counts: Counter[str] = field(default_factory=Counter)
    rejections: Counter[str] = field(default_factory=Counter)
    policy_changes: list[str] = field(default_factory=list)
    dead_letters: int = 0
    events_digest: str = ""
    portfolio_digest: str = ""

    @property
    def total_return(self) -> Decimal:
        return self.final_equity / self.starting_equity - 1

    @property
    def win_rate(self) -> Decimal | None:
        return win_rate(self.trades)

    @property
    def profit_factor(self) -> Decimal | None:
        return profit_factor(self.trades)

    def render(self) -> str:
        rows: list[tuple[str, str]] = [
            ("feed", self.feed),
            ("period", f"{_time(self.start)} .. {_time(self.end)}"),
            ("ticks", str(self.counts["market.tick"])),
            ("signals", str(self.counts["ai.signal.generated"])),
            (
                "approved / rejected",
                f"{self.counts['risk.signal.approved']} / {self.counts['risk.signal.rejected']}",
            ),
            ("orders filled", str(self.counts["execution.order.filled"])),
            ("", ""),
            ("starting equity", _money(self.starting_equity)),
            ("final equity", _money(self.final_equity)),
            ("total return", _pct(self.total_return)),
            ("realized PnL", _money(self.realized_pnl)),
            ("unrealized PnL", _money(self.unrealized_pnl)),
            ("", ""),
            ("trades (closed)", str(len(self.trades))),
            ("open at end", str(self.open_at_end)),
            ("win rate", _pct(self.win_rate)),
            ("profit factor", _ratio(self.profit_factor)),
            (f"Sharpe ({_bar(self.bar)} bars, annualised)", _float(self.sharpe)),
            (f"Sortino ({_bar(self.bar)} bars, annualised)", _float(self.sortino)),
            ("max drawdown", f"{_pct(self.drawdown.fraction)} ({_money(self.drawdown.amount)})"),
            ("time in market", _pct(self.time_in_market)),
            ("avg gross exposure / equity", _pct(self.average_exposure)),
        ]
        lines = ["Quantum Trader backtest", "=" * 23, *_table(rows), ""]
        header = ("symbol", "ticks", "trades", "win rate", "profit f.", "net PnL", "in market")
        table = [header] + [
            (
                s.symbol,
                str(s.ticks),
                str(s.trades),
                _pct(s.win_rate),
                _ratio(s.profit_factor),
                _money(s.net_pnl),
                _pct(s.time_in_market),
            )
            for s in self.per_symbol
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            cells = [row[0].ljust(widths[0])]
            cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
            lines.append("  ".join(cells))
        lines.append("")
        if self.rejections:
            lines.append(
                "rejections: " + ", ".join(f"{r} {n}" for r, n in self.rejections.most_common())
            )
        lines.append("policy changes: " + ("; ".join(self.policy_changes) or "none"))
        lines.append(f"dead letters: {self.dead_letters}")
        lines.append(f"events digest: {self.events_digest}")
        lines.append(f"portfolio digest: {self.portfolio_digest}")
        return "\n".join(lines)


def collect_trades(events: Iterable[Envelope]) -> tuple[list[Trade], dict[str, datetime]]:
    """Round trips from PositionOpened/PositionClosed (one position per symbol at a time),
    and the opening time of each position still open at the end."""
    opened: dict[str, tuple[datetime, str]] = {}
    trades: list[Trade] = []
    for envelope in events:
        if envelope.event_type == "portfolio.position.opened":
            payload = portfolio_pb2.PositionOpened.FromString(envelope.payload)
            opened[payload.symbol] = (payload.opened_at.ToDatetime(tzinfo=UTC), payload.order_id)
        elif envelope.event_type == "portfolio.position.closed":
            closed = portfolio_pb2.PositionClosed.FromString(envelope.payload)
            closed_at = closed.closed_at.ToDatetime(tzinfo=UTC)
            opened_at, open_order = opened.pop(closed.symbol, (closed_at, ""))
            trades.append(
                Trade(
                    symbol=closed.symbol,
                    side=Side.Name(closed.side).removeprefix("SIDE_"),
                    quantity=Decimal(closed.quantity),
                    entry_price=Decimal(closed.entry_price),
                    exit_price=Decimal(closed.exit_price),
                    opened_at=opened_at,
                    closed_at=closed_at,
                    pnl=Decimal(closed.realized_pnl),
                    open_order_id=open_order,
                    close_order_id=closed.order_id,
                )
            )
    return trades, {symbol: at for symbol, (at, _) in opened.items()}


def build_report(
    events: Sequence[Envelope],
    *,
    feed: str,
    starting_equity: Decimal,
    final_equity: Decimal,
    realized_pnl: Decimal,
    unrealized_pnl: Decimal,
    bar: timedelta,
) -> BacktestReport:
    """The report of a run from its events in order; the final figures from the ledger."""
    counts: Counter[str] = Counter(e.event_type for e in events)
    rejections: Counter[str] = Counter()
    ticks: Counter[str] = Counter()
    equity: list[EquityPoint] = []
    times: list[datetime] = []
    for envelope in events:
        kind = envelope.event_type
        if kind == "market.tick":
            ticks[envelope.partition_key] += 1
            times.append(envelope.occurred_at.ToDatetime(tzinfo=UTC))
        elif kind == "portfolio.pnl.updated":
            pnl = portfolio_pb2.PnlUpdated.FromString(envelope.payload)
            at = envelope.occurred_at.ToDatetime(tzinfo=UTC)
            equity.append(EquityPoint(at, Decimal(pnl.equity), Decimal(pnl.exposure or "0")))
        elif kind == "risk.signal.rejected":
            rejected = risk_pb2.SignalRejected.FromString(envelope.payload)
            rejections[risk_pb2.RejectReason.Name(rejected.reason)] += 1
    if not times:
        raise ValueError("a backtest report needs at least one tick")
    start, end = min(times), max(times)
    equity.sort(key=lambda point: point.at)  # stable: same-time points keep their order
    if not equity or equity[-1].equity != final_equity:
        exposure = equity[-1].exposure if equity else Decimal(0)
        equity.append(EquityPoint(end, final_equity, exposure))
    trades, still_open = collect_trades(events)
    intervals = [(t.opened_at, t.closed_at) for t in trades]
    intervals += [(at, end) for at in still_open.values()]
    returns = bar_returns(equity, starting_equity, start=start, end=end, bar=bar)
    periods = periods_per_year(bar)
    per_symbol = []
    for symbol in sorted(ticks):
        mine = [t for t in trades if t.symbol == symbol]
        spans = [(t.opened_at, t.closed_at) for t in mine]
        if symbol in still_open:
            spans.append((still_open[symbol], end))
        per_symbol.append(
            SymbolReport(
                symbol=symbol,
                ticks=ticks[symbol],
                trades=len(mine),
                win_rate=win_rate(mine),
                profit_factor=profit_factor(mine),
                net_pnl=sum((t.pnl for t in mine), Decimal(0)),
                time_in_market=time_in_market(spans, start=start, end=end),
            )
        )
    return BacktestReport(
        feed=feed,
        start=start,
        end=end,
        bar=bar,
        starting_equity=starting_equity,
        final_equity=final_equity,
        realized_pnl=realized_pnl,
        unrealized_pnl=unrealized_pnl,
        trades=trades,
        open_at_end=len(still_open),
        equity=equity,
        returns=returns,
        sharpe=sharpe(returns, periods),
        sortino=sortino(returns, periods),
        drawdown=max_drawdown(starting_equity, equity),
        time_in_market=time_in_market(intervals, start=start, end=end),
        average_exposure=average_exposure(equity, start=start, end=end),
        per_symbol=per_symbol,
        counts=counts,
        rejections=rejections,
    )


def write_trades_csv(trades: Iterable[Trade], path: Path) -> None:
    """One row per closed trade, in closing order; times ISO 8601 UTC, numbers as decimals."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(TRADE_COLUMNS)
        for t in trades:
            writer.writerow(
                [
                    t.symbol,
                    t.side,
                    f"{t.quantity:f}",
                    f"{t.entry_price:f}",
                    f"{t.exit_price:f}",
                    _time(t.opened_at),
                    _time(t.closed_at),
                    f"{t.pnl:f}",
                    t.open_order_id,
                    t.close_order_id,
                ]
            )


def _table(rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(left) for left, _ in rows)
    return [f"{left:<{width}}  {value}" if left else "" for left, value in rows]


def _time(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _money(value: Decimal) -> str:
    return f"{value:,.2f}"


def _pct(value: Decimal | None) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def _ratio(value: Decimal | None) -> str:
    if value is None:
        return "-"
    return "inf" if value.is_infinite() else f"{value:.2f}"


def _float(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _bar(bar: timedelta) -> str:
    seconds = int(bar.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
