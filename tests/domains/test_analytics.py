"""analytics: daily statistics and the automatic switch to DEFENSIVE, REDUCING and HALTED."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from quantum.events.v1.analytics_pb2 import StatsUpdated
from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.portfolio_pb2 import PnlUpdated, PositionClosed

from runtime.core.policy import RiskMode, TradingState
from runtime.domains.analytics import Analytics
from tests.domains.support import StubPolicyStore, VersionConflict, at, policy, run


def _closed(pnl: str) -> PositionClosed:
    return PositionClosed(symbol="BTC-USD", side=Side.SIDE_BUY, quantity="1", realized_pnl=pnl)


def _pnl(drawdown: str = "0", daily_pnl: str = "0", equity: str = "100000") -> PnlUpdated:
    return PnlUpdated(equity=equity, drawdown=drawdown, daily_pnl=daily_pnl, symbol="BTC-USD")


def _analytics(store: StubPolicyStore | None = None) -> tuple[Analytics, StubPolicyStore]:
    store = store or StubPolicyStore()
    return Analytics(store), store


async def test_closed_positions_make_trades_and_win_rate() -> None:
    analytics, _ = _analytics()
    await run(analytics, _closed("10"), when=at(0))
    await run(analytics, _closed("-4"), when=at(1))
    [stats] = await run(analytics, _closed("2.5"), when=at(2))
    assert isinstance(stats, StatsUpdated)
    assert (stats.trading_day, stats.trades, stats.winning_trades, stats.win_rate) == (
        "2026-11-23",
        3,
        2,
        "0.6667",
    )
    assert stats.realized_pnl == "8.50000000"


async def test_pnl_updates_track_max_drawdown_and_daily_loss() -> None:
    analytics, store = _analytics()
    await run(analytics, _pnl(drawdown="0.02", daily_pnl="-500", equity="99500"), when=at(0))
    [stats] = await run(
        analytics, _pnl(drawdown="0.01", daily_pnl="-1000", equity="99000"), when=at(2)
    )
    assert isinstance(stats, StatsUpdated)
    assert (stats.max_drawdown, stats.daily_loss) == ("0.02", "1000.00000000")
    assert store.calls == []  # 2% drawdown and 1% daily loss are within NORMAL's limits


async def test_stats_from_pnl_are_throttled_by_event_time() -> None:
    analytics, _ = _analytics()
    assert len(await run(analytics, _pnl(), when=at(0))) == 1
    assert await run(analytics, _pnl(), when=at(0.5)) == []
    assert len(await run(analytics, _pnl(), when=at(1))) == 1


async def test_a_new_day_starts_new_stats() -> None:
    analytics, _ = _analytics()
    await run(analytics, _closed("10"), when=at(0))
    [stats] = await run(analytics, _closed("-1"), when=at(0) + timedelta(days=1))
    assert isinstance(stats, StatsUpdated)
    assert (stats.trading_day, stats.trades, stats.winning_trades) == ("2026-11-24", 1, 0)


async def test_drawdown_past_the_limit_switches_to_defensive_once() -> None:
    analytics, store = _analytics()
    await run(analytics, _pnl(drawdown="0.11"))  # NORMAL limit: 10%
    assert store.calls == [
        ("mode", "DEFENSIVE", "analytics", "drawdown 11.00% passed the NORMAL limit 10%")
    ]
    assert store.policy.mode is RiskMode.DEFENSIVE
    assert store.policy.version == 2
    await run(analytics, _pnl(drawdown="0.045"))  # under DEFENSIVE's 5%: nothing more
    await run(analytics, _pnl(drawdown="0.049"))
    assert len(store.calls) == 1


async def test_daily_loss_past_the_limit_switches_to_defensive() -> None:
    analytics, store = _analytics()
    await run(analytics, _pnl(daily_pnl="-3100", equity="96900"))  # 3.1% of 100,000
    assert store.calls[0][:2] == ("mode", "DEFENSIVE")
    assert "daily loss 3.10% passed the NORMAL limit 3%" in store.calls[0][3]


async def test_no_ask_when_the_policy_already_says_defensive() -> None:
    analytics, store = _analytics(StubPolicyStore(policy(mode=RiskMode.DEFENSIVE)))
    await run(analytics, _pnl(drawdown="0.06"))  # past DEFENSIVE's 5%, below 2x
    assert store.calls == []


async def test_twice_the_limit_sets_reducing_and_three_times_halted() -> None:
    analytics, store = _analytics(StubPolicyStore(policy(mode=RiskMode.DEFENSIVE)))
    await run(analytics, _pnl(drawdown="0.10"))  # 2x DEFENSIVE's 5%
    assert store.calls == [
        ("state", "REDUCING", "analytics", "drawdown 10.00% passed the DEFENSIVE limit 5%")
    ]
    await run(analytics, _pnl(drawdown="0.12"))  # still REDUCING: asks nothing
    assert len(store.calls) == 1
    await run(analytics, _pnl(drawdown="0.15"))  # 3x
    assert store.calls[-1][:2] == ("state", "HALTED")
    await run(analytics, _pnl(drawdown="0.01"))  # it never de-escalates by itself
    assert store.policy.trading_state is TradingState.HALTED
    assert len(store.calls) == 2


async def test_tiers_count_from_the_limits_in_force_when_the_breach_began() -> None:
    analytics, store = _analytics()
    await run(analytics, _pnl(drawdown="0.12"))  # NORMAL 10%: DEFENSIVE, nothing more
    await run(analytics, _pnl(drawdown="0.19"))  # 3.8x DEFENSIVE's 5%, but 1.9x NORMAL's
    assert [c[:2] for c in store.calls] == [("mode", "DEFENSIVE")]
    await run(analytics, _pnl(drawdown="0.20"))  # 2x NORMAL's
    assert store.calls[-1] == (
        "state",
        "REDUCING",
        "analytics",
        "drawdown 20.00% passed the NORMAL limit 10%",
    )


async def test_a_crash_goes_defensive_and_halted_in_one_step() -> None:
    analytics, store = _analytics()
    await run(analytics, _pnl(drawdown="0.31"))  # 3.1x NORMAL's 10%
    assert [c[:2] for c in store.calls] == [("mode", "DEFENSIVE"), ("state", "HALTED")]
    assert store.policy.version == 3


async def test_the_breach_episode_survives_a_restart() -> None:
    analytics, store = _analytics()
    await run(analytics, _pnl(drawdown="0.12"))
    restarted = Analytics(store)
    restarted.restore_state(analytics.snapshot_state())
    assert restarted.reference_mode is RiskMode.NORMAL
    await run(restarted, _pnl(drawdown="0.15"))  # 1.5x NORMAL's: no REDUCING yet
    assert len(store.calls) == 1


async def test_a_conflicting_write_fails_the_handler_without_counting_twice() -> None:
    store = StubPolicyStore()
    analytics, _ = _analytics(store)

    async def conflict(*args: object, **kwargs: object) -> None:
        raise VersionConflict("someone else changed the policy")

    store.switch_mode = conflict  # type: ignore[method-assign]
    with pytest.raises(VersionConflict):
        await run(analytics, _pnl(drawdown="0.2"))
    assert analytics.stats is None  # nothing recorded: a retry starts clean


def test_thresholds_are_checked() -> None:
    with pytest.raises(ValueError, match="reduce_at"):
        Analytics(StubPolicyStore(), reduce_at=Decimal(3), halt_at=Decimal(2))
