"""The documented default policy: what a fresh system starts with (version 1).

| limit                  | AGGRESSIVE | NORMAL | DEFENSIVE |
|------------------------|-----------:|-------:|----------:|
| min_confidence         |       0.50 |   0.60 |      0.75 |
| max_leverage           |          5 |      3 |         1 |
| max_position_notional  |      50000 |  25000 |     10000 |
| max_open_positions     |         10 |      5 |         2 |
| risk_per_trade_pct     |          2 |      1 |       0.5 |
| max_daily_loss_pct     |          5 |      3 |       1.5 |
| max_drawdown_pct       |         15 |     10 |         5 |
| max_orders_per_second  |         20 |     10 |         5 |
| allowed_symbols        | BTC-USD, ETH-USD, SOL-USD (every mode)  |

Mode NORMAL, trading state ACTIVE. README.md carries the same table.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType

from runtime.core.policy.model import ModeLimits, Policy, RiskMode, TradingState

DEFAULT_ALLOWED_SYMBOLS: frozenset[str] = frozenset({"BTC-USD", "ETH-USD", "SOL-USD"})

DEFAULT_LIMITS: MappingProxyType[RiskMode, ModeLimits] = MappingProxyType(
    {
        RiskMode.AGGRESSIVE: ModeLimits(
            min_confidence=Decimal("0.50"),
            max_leverage=Decimal("5"),
            max_position_notional=Decimal("50000"),
            max_open_positions=10,
            risk_per_trade_pct=Decimal("2"),
            max_daily_loss_pct=Decimal("5"),
            allowed_symbols=DEFAULT_ALLOWED_SYMBOLS,
            max_orders_per_second=20,
            max_drawdown_pct=Decimal("15"),
        ),
        RiskMode.NORMAL: ModeLimits(
            min_confidence=Decimal("0.60"),
            max_leverage=Decimal("3"),
            max_position_notional=Decimal("25000"),
            max_open_positions=5,
            risk_per_trade_pct=Decimal("1"),
            max_daily_loss_pct=Decimal("3"),
            allowed_symbols=DEFAULT_ALLOWED_SYMBOLS,
            max_orders_per_second=10,
            max_drawdown_pct=Decimal("10"),
        ),
        RiskMode.DEFENSIVE: ModeLimits(
            min_confidence=Decimal("0.75"),
            max_leverage=Decimal("1"),
            max_position_notional=Decimal("10000"),
            max_open_positions=2,
            risk_per_trade_pct=Decimal("0.5"),
            max_daily_loss_pct=Decimal("1.5"),
            allowed_symbols=DEFAULT_ALLOWED_SYMBOLS,
            max_orders_per_second=5,
            max_drawdown_pct=Decimal("5"),
        ),
    }
)

DEFAULT_MODE = RiskMode.NORMAL
DEFAULT_TRADING_STATE = TradingState.ACTIVE
DEFAULTS_CHANGED_BY = "policy_store"
DEFAULTS_REASON = "initial policy: the documented defaults"


def default_policy(at: datetime | None = None) -> Policy:
    """The documented defaults as version 1."""
    return Policy(
        version=1,
        mode=DEFAULT_MODE,
        trading_state=DEFAULT_TRADING_STATE,
        limits=DEFAULT_LIMITS,
        updated_at=at or datetime.now(UTC),
        updated_by=DEFAULTS_CHANGED_BY,
        reason=DEFAULTS_REASON,
    )
