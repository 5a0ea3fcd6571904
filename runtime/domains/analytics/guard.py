"""The drawdown guard: how far past the policy's limits the account is, and what to ask for.

Severity is the worse of drawdown / max_drawdown_pct and daily loss / max_daily_loss_pct,
against the limits of the mode in force when the breach began. At 1 the guard asks for
DEFENSIVE; at ``reduce_at`` (default 2) for trading state REDUCING; at ``halt_at`` (default 3)
for HALTED. It only ever escalates: going back to NORMAL or ACTIVE is a person's decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from runtime.core.policy import ModeLimits, Policy, RiskMode, TradingState
from runtime.core.policy.ports import PolicyReader, PolicyWriter

_STATE_RANK = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


class PolicyControl(PolicyReader, PolicyWriter, Protocol):
    """What analytics needs of the PolicyStore: read, switch mode, set trading state."""


@dataclass(frozen=True, slots=True)
class Breach:
    """The worst limit breach: which measure, its value and the limit, both in percent."""

    measure: str
    value_pct: Decimal
    limit_pct: Decimal
    mode: RiskMode

    @property
    def severity(self) -> Decimal:
        return self.value_pct / self.limit_pct if self.limit_pct > 0 else Decimal("Infinity")

    def describe(self) -> str:
        return (
            f"{self.measure} {self.value_pct.quantize(Decimal('0.01'))}% passed the "
            f"{self.mode.value} limit {self.limit_pct}%"
        )


def worst_breach(
    limits: ModeLimits, mode: RiskMode, drawdown_pct: Decimal, daily_loss_pct: Decimal
) -> Breach:
    drawdown = Breach("drawdown", drawdown_pct, limits.max_drawdown_pct, mode)
    loss = Breach("daily loss", daily_loss_pct, limits.max_daily_loss_pct, mode)
    return drawdown if drawdown.severity >= loss.severity else loss


@dataclass(frozen=True, slots=True)
class Escalation:
    """What the guard wants the policy to say; None where it wants no change."""

    mode: RiskMode | None
    trading_state: TradingState | None


def escalation_for(
    breach: Breach, policy: Policy, *, reduce_at: Decimal, halt_at: Decimal
) -> Escalation:
    severity = breach.severity
    mode = RiskMode.DEFENSIVE if severity >= 1 and policy.mode is not RiskMode.DEFENSIVE else None
    wanted: TradingState | None = None
    if severity >= halt_at:
        wanted = TradingState.HALTED
    elif severity >= reduce_at:
        wanted = TradingState.REDUCING
    if wanted is not None and _STATE_RANK[wanted] <= _STATE_RANK[policy.trading_state]:
        wanted = None
    return Escalation(mode, wanted)
