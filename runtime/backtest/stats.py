"""The statistics of a backtest report, defined once and precisely (README: Backtesting).

Pure functions over plain values: closed trades, an equity curve and time spans. Money stays
``Decimal``; ratios of returns (Sharpe, Sortino) are floats.

- win rate: winning trades / closed trades; a trade wins when its realised PnL (fees
  included) is > 0.
- profit factor: gross profit / gross loss (sum of winning PnL over the absolute sum of
  losing PnL); infinite with wins and no losses; none without any closed trade or PnL.
- bar returns: the equity curve sampled at the end of each bar of length ``bar`` from the
  first tick on (the last value at or before each bar end, carried forward); ``r_k =
  E_k / E_(k-1) - 1`` with ``E_0`` the starting equity; the last bar may be partial.
- Sharpe: ``mean(r) / stdev(r) * sqrt(P)`` with the sample standard deviation (n - 1), a
  risk-free rate of 0 and ``P = 365 days / bar`` periods per year (crypto trades every day);
  none with fewer than two returns or no variation.
- Sortino: ``mean(r) / DD * sqrt(P)`` with the downside deviation ``DD = sqrt(sum(min(r_k,
  0)^2) / n)`` (target return 0, over all n returns); none with fewer than two returns or no
  negative return.
- max drawdown: the largest fall from a running peak of the equity curve (starting equity
  first, then every point), as a fraction of that peak, with the amount lost.
- time in market: the fraction of the backtest's span (first to last tick) during which a
  position was open (positions still open at the end count until the last tick).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

YEAR = timedelta(days=365)
INFINITE = Decimal("Infinity")


@dataclass(frozen=True, slots=True)
class Trade:
    """One round trip: a position from its opening fill to the fill that closed it."""

    symbol: str
    side: str  # BUY (long) or SELL (short)
    quantity: Decimal
    entry_price: Decimal
    exit_price: Decimal
    opened_at: datetime
    closed_at: datetime
    pnl: Decimal  # realised, fees included
    open_order_id: str
    close_order_id: str


@dataclass(frozen=True, slots=True)
class EquityPoint:
    """The account at one moment: equity and gross exposure (sum of |quantity x mark|)."""

    at: datetime
    equity: Decimal
    exposure: Decimal


@dataclass(frozen=True, slots=True)
class Drawdown:
    fraction: Decimal  # (peak - trough) / peak, in [0, 1]
    amount: Decimal  # peak - trough, in account currency
    peak_at: datetime | None
    trough_at: datetime | None


def win_rate(trades: Sequence[Trade]) -> Decimal | None:
    if not trades:
        return None
    return Decimal(sum(1 for t in trades if t.pnl > 0)) / Decimal(len(trades))


def profit_factor(trades: Iterable[Trade]) -> Decimal | None:
    profit = Decimal(0)
    loss = Decimal(0)
    for trade in trades:
        if trade.pnl > 0:
            profit += trade.pnl
        else:
            loss -= trade.pnl
    if loss == 0:
        return INFINITE if profit > 0 else None
    return profit / loss


def bar_returns(
    points: Sequence[EquityPoint],
    starting_equity: Decimal,
    *,
    start: datetime,
    end: datetime,
    bar: timedelta,
) -> list[float]:
    """Per-bar returns of the equity curve; see the module doc. ``points`` in time order."""
    if bar <= timedelta(0):
        raise ValueError(f"bar must be positive; got {bar}")
    if end <= start:
        return []
    bars = math.ceil((end - start) / bar)
    returns: list[float] = []
    previous = starting_equity
    current = starting_equity
    index = 0
    for k in range(1, bars + 1):
        bar_end = start + k * bar
        while index < len(points) and points[index].at <= bar_end:
            current = points[index].equity
            index += 1
        returns.append(float(current / previous - 1) if previous else 0.0)
        previous = current
    return returns


def periods_per_year(bar: timedelta) -> float:
    return YEAR / bar


def sharpe(returns: Sequence[float], periods: float) -> float | None:
    n = len(returns)
    if n < 2:
        return None
    mean = sum(returns) / n
    variance = sum((r - mean) ** 2 for r in returns) / (n - 1)
    if variance <= 0:
        return None
    return mean / math.sqrt(variance) * math.sqrt(periods)


def sortino(returns: Sequence[float], periods: float) -> float | None:
    n = len(returns)
    if n < 2:
        return None
    downside = math.sqrt(sum(min(r, 0.0) ** 2 for r in returns) / n)
    if downside == 0:
        return None
    return sum(returns) / n / downside * math.sqrt(periods)


def max_drawdown(starting_equity: Decimal, points: Iterable[EquityPoint]) -> Drawdown:
    peak = starting_equity
    peak_at: datetime | None = None
    worst = Drawdown(Decimal(0), Decimal(0), None, None)
    for point in points:
        if point.equity > peak:
            peak, peak_at = point.equity, point.at
            continue
        if peak <= 0:
            continue
        fraction = (peak - point.equity) / peak
        if fraction > worst.fraction:
            worst = Drawdown(fraction, peak - point.equity, peak_at, point.at)
    return worst


def time_in_market(
    intervals: Iterable[tuple[datetime, datetime]], *, start: datetime, end: datetime
) -> Decimal:
    """The fraction of [start, end] covered by the union of ``intervals``."""
    span = end - start
    if span <= timedelta(0):
        return Decimal(0)
    clipped = sorted((max(a, start), min(b, end)) for a, b in intervals if b > start and a < end)
    covered = timedelta(0)
    current_start: datetime | None = None
    current_end: datetime | None = None
    for a, b in clipped:
        if current_end is None or a > current_end:
            if current_start is not None and current_end is not None:
                covered += current_end - current_start
            current_start, current_end = a, b
        elif b > current_end:
            current_end = b
    if current_start is not None and current_end is not None:
        covered += current_end - current_start
    return Decimal(covered // timedelta(microseconds=1)) / Decimal(
        span // timedelta(microseconds=1)
    )


def average_exposure(points: Sequence[EquityPoint], *, start: datetime, end: datetime) -> Decimal:
    """Time-weighted mean of gross exposure / equity over [start, end]: each point holds until
    the next one; before the first point the account holds nothing."""
    span = end - start
    if span <= timedelta(0):
        return Decimal(0)
    total = Decimal(0)
    for index, point in enumerate(points):
        if point.equity <= 0:
            continue
        held_from = max(point.at, start)
        held_to = points[index + 1].at if index + 1 < len(points) else end
        held_to = min(held_to, end)
        if held_to <= held_from:
            continue
        micros = (held_to - held_from) // timedelta(microseconds=1)
        total += point.exposure / point.equity * micros
    return total / Decimal(span // timedelta(microseconds=1))
