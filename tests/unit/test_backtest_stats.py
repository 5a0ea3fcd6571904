"""The backtest statistics against values computed by hand (definitions: README, Backtesting)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from runtime.backtest.stats import (
    INFINITE,
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

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def trade(pnl: str) -> Trade:
    return Trade("BTC-USD", "BUY", Decimal(1), Decimal(1), Decimal(1), T0, T0, Decimal(pnl), "", "")


def point(offset: timedelta, equity: str, exposure: str = "0") -> EquityPoint:
    return EquityPoint(T0 + offset, Decimal(equity), Decimal(exposure))


def test_win_rate_and_profit_factor() -> None:
    trades = [trade("50"), trade("-20"), trade("30"), trade("-10"), trade("0")]
    assert win_rate(trades) == Decimal(2) / Decimal(5)  # a trade at 0 does not win
    assert profit_factor(trades) == Decimal(80) / Decimal(30)
    assert profit_factor([trade("5")]) == INFINITE
    assert profit_factor([]) is None
    assert profit_factor([trade("0")]) is None
    assert win_rate([]) is None


def test_bar_returns_carry_the_last_equity_forward() -> None:
    points = [point(DAY / 2, "110"), point(DAY, "105"), point(DAY * 2.5, "99")]
    returns = bar_returns(points, Decimal(100), start=T0, end=T0 + 3 * DAY, bar=DAY)
    # bar 1 ends at T0+1d (105, the point at the bar end counts), bar 2 holds, bar 3 at 99
    assert returns == pytest.approx([0.05, 0.0, 99 / 105 - 1])
    # a partial last bar still counts
    assert len(bar_returns(points, Decimal(100), start=T0, end=T0 + DAY * 2.1, bar=DAY)) == 3
    assert bar_returns(points, Decimal(100), start=T0, end=T0, bar=DAY) == []
    with pytest.raises(ValueError, match="bar must be positive"):
        bar_returns(points, Decimal(100), start=T0, end=T0 + DAY, bar=timedelta(0))


def test_sharpe_and_sortino_by_hand() -> None:
    # Equity 100 -> 110 -> 99 -> 108.9 on daily bars: returns +10 %, -10 %, +10 %.
    points = [point(DAY, "110"), point(2 * DAY, "99"), point(3 * DAY, "108.9")]
    returns = bar_returns(points, Decimal(100), start=T0, end=T0 + 3 * DAY, bar=DAY)
    assert returns == pytest.approx([0.1, -0.1, 0.1])
    periods = periods_per_year(DAY)
    assert periods == 365
    # mean 1/30; sample variance ((2/30)^2 * 2 + (4/30)^2) / 2 = 1/75
    assert sharpe(returns, periods) == pytest.approx(math.sqrt(75 * 365) / 30)  # 5.5151
    # downside deviation sqrt(0.1^2 / 3) = sqrt(1/300)
    assert sortino(returns, periods) == pytest.approx(math.sqrt(300 * 365) / 30)  # 11.0303
    assert sharpe(returns, periods) == pytest.approx(5.5151, abs=1e-4)
    assert sortino(returns, periods) == pytest.approx(11.0303, abs=1e-4)


def test_sharpe_and_sortino_are_undefined_without_enough_variation() -> None:
    assert sharpe([0.1], 365) is None
    assert sharpe([0.01, 0.01, 0.01], 365) is None
    assert sortino([0.01, 0.02], 365) is None  # no losing period: no downside
    assert sortino([], 365) is None
    assert periods_per_year(timedelta(minutes=1)) == 525_600


def test_max_drawdown_is_the_deepest_fall_from_a_running_peak() -> None:
    points = [
        point(DAY * 1, "110"),
        point(DAY * 2, "99"),
        point(DAY * 3, "120"),
        point(DAY * 4, "90"),
        point(DAY * 5, "130"),
    ]
    drawdown = max_drawdown(Decimal(100), points)
    assert drawdown.fraction == Decimal("0.25")  # 120 -> 90
    assert drawdown.amount == Decimal(30)
    assert drawdown.peak_at == T0 + 3 * DAY
    assert drawdown.trough_at == T0 + 4 * DAY
    below_start = max_drawdown(Decimal(100), [point(DAY, "80")])
    assert below_start.fraction == Decimal("0.2")
    assert max_drawdown(Decimal(100), []).fraction == 0


def test_time_in_market_counts_overlaps_once_and_clips_to_the_span() -> None:
    s = timedelta(seconds=1)
    intervals = [
        (T0 + 10 * s, T0 + 30 * s),
        (T0 + 20 * s, T0 + 40 * s),
        (T0 + 90 * s, T0 + 120 * s),
    ]
    # union inside [0, 100]: 10..40 and 90..100 = 40 s of 100
    assert time_in_market(intervals, start=T0, end=T0 + 100 * s) == Decimal("0.4")
    assert time_in_market([], start=T0, end=T0 + 100 * s) == 0
    assert time_in_market(intervals, start=T0, end=T0) == 0


def test_average_exposure_is_time_weighted() -> None:
    s = timedelta(seconds=1)
    points = [point(0 * s, "100", "0"), point(50 * s, "100", "50")]
    # nothing for 50 s, then half the equity for 50 s: a quarter on average
    assert average_exposure(points, start=T0, end=T0 + 100 * s) == Decimal("0.25")
