"""The in-memory policy of a backtest: versions, compare-and-set, audit, logical time."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from quantum.events.v1.portfolio_pb2 import PnlUpdated

from runtime.core.actor import deliver
from runtime.core.envelope import seal
from runtime.core.policy import PolicyValidationError, RiskMode, TradingState, VersionConflict
from runtime.core.policy.defaults import default_policy
from runtime.core.policy.memory import InMemoryPolicy
from runtime.domains.analytics import Analytics

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 2, tzinfo=UTC)


async def test_changes_bump_the_version_and_are_stamped_with_the_given_clock() -> None:
    policy = InMemoryPolicy(default_policy(at=T0), clock=lambda: T1)
    assert policy.get_policy().version == 1
    changed = await policy.switch_mode(RiskMode.DEFENSIVE, changed_by="test", reason="why")
    assert (changed.version, changed.mode, changed.updated_at) == (2, RiskMode.DEFENSIVE, T1)
    same = await policy.switch_mode(RiskMode.DEFENSIVE, changed_by="test", reason="again")
    assert same.version == 2  # the value in force: nothing written
    with pytest.raises(VersionConflict):
        await policy.set_trading_state(
            TradingState.HALTED, expected_version=1, changed_by="test", reason="stale"
        )
    with pytest.raises(PolicyValidationError):
        await policy.set_trading_state(TradingState.HALTED, changed_by=" ", reason="")
    assert policy.get_policy().trading_state == TradingState.ACTIVE
    assert [(c.version, c.fields, c.changed_by) for c in policy.history] == [(2, ("mode",), "test")]


async def test_analytics_switches_the_in_memory_policy_on_a_drawdown_breach() -> None:
    policy = InMemoryPolicy(default_policy(at=T0), clock=lambda: T1)
    analytics = Analytics(policy)
    pnl = PnlUpdated(symbol="BTC-USD", equity="88000", drawdown="0.12", daily_pnl="0")
    await deliver(analytics, seal(pnl, producer="portfolio", partition_key="BTC-USD"))
    current = policy.get_policy()
    assert current.mode == RiskMode.DEFENSIVE  # 12 % > NORMAL's 10 % drawdown limit
    assert current.version == 2
    assert current.updated_by == "analytics"
    assert current.updated_at == T1
