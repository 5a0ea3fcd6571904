"""The policy model: immutable values that domain code reads on its hot path.

``Policy`` is what ``PolicyStore.get_policy()`` returns: a frozen snapshot with its version.
Decimal limits are ``decimal.Decimal``; the proto form (``quantum.events.v1.Policy``) uses
decimal strings.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType


class RiskMode(enum.StrEnum):
    """Which set of limits is in force."""

    AGGRESSIVE = "AGGRESSIVE"
    NORMAL = "NORMAL"
    DEFENSIVE = "DEFENSIVE"


class TradingState(enum.StrEnum):
    """What kinds of orders may go out at all."""

    ACTIVE = "ACTIVE"  # every order the limits allow
    REDUCING = "REDUCING"  # only orders that reduce or close a position
    HALTED = "HALTED"  # nothing


@dataclass(frozen=True, slots=True)
class ModeLimits:
    """The pre-trade limits of one risk mode."""

    min_confidence: Decimal  # signal confidence in [0, 1]
    max_leverage: Decimal  # gross exposure / equity, >= 1
    max_position_notional: Decimal  # account currency, per position
    max_open_positions: int
    risk_per_trade_pct: Decimal  # percent of equity per trade, (0, 100]
    max_daily_loss_pct: Decimal  # percent of start-of-day equity, (0, 100]
    allowed_symbols: frozenset[str]  # never empty
    max_orders_per_second: int
    max_drawdown_pct: Decimal  # percent from peak equity, (0, 100]


@dataclass(frozen=True, slots=True)
class Policy:
    """The whole risk configuration at one version."""

    version: int
    mode: RiskMode
    trading_state: TradingState
    limits: Mapping[RiskMode, ModeLimits]
    updated_at: datetime | None = None
    updated_by: str = ""
    reason: str = ""
    _active: ModeLimits | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "limits", MappingProxyType(dict(self.limits)))
        object.__setattr__(self, "_active", self.limits[self.mode])

    @property
    def active_limits(self) -> ModeLimits:
        """The limits of the active mode."""
        assert self._active is not None
        return self._active
