"""The analytics actor: position and PnL events in; daily statistics out; the drawdown guard.

When the account breaks the policy's drawdown or daily-loss limit, analytics asks the
PolicyStore for DEFENSIVE (and past harder thresholds for REDUCING, then HALTED), with the
breach as the recorded reason. It asks only when the policy does not already say so, and
consults the policy before changing its own state, so a failed write can be retried safely.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from decimal import Decimal

from quantum.events.v1.analytics_pb2 import StatsUpdated
from quantum.events.v1.portfolio_pb2 import PnlUpdated, PositionClosed

from runtime.core import event_checks as door
from runtime.core.actor import Actor, HandlerContext, handles
from runtime.core.policy import Policy, RiskMode
from runtime.domains.analytics.guard import PolicyControl, escalation_for, worst_breach
from runtime.domains.analytics.stats import DailyStats

CHANGED_BY = "analytics"


class Analytics(Actor):
    """Daily statistics and the automatic switch to DEFENSIVE.

    ``stats_interval`` bounds how often PnL updates (one per tick) produce a StatsUpdated;
    every closed position produces one.
    """

    name = "analytics"

    def __init__(
        self,
        policy: PolicyControl,
        *,
        reduce_at: Decimal = Decimal(2),
        halt_at: Decimal = Decimal(3),
        stats_interval: timedelta = timedelta(seconds=1),
    ) -> None:
        if not 1 <= reduce_at <= halt_at:
            raise ValueError(
                f"thresholds must satisfy 1 <= reduce_at <= halt_at, got {reduce_at}, {halt_at}"
            )
        self.policy = policy
        self.reduce_at = reduce_at
        self.halt_at = halt_at
        self.stats_interval = stats_interval
        self.stats: DailyStats | None = None
        self._last_stats_at: datetime | None = None
        self.policy_changes: list[str] = []
        # The mode whose limits were in force when the current breach began; None: no breach.
        self.reference_mode: RiskMode | None = None

    @handles
    def on_position_closed(self, closed: PositionClosed, ctx: HandlerContext) -> None:
        now = door.occurred_at(ctx.envelope)
        door.symbol(closed.symbol)
        realized_pnl = door.money(closed.realized_pnl, "realized_pnl")
        stats = self._stats_for(now.date())
        stats.record_trade(realized_pnl)
        self._emit_stats(stats, ctx)

    @handles
    async def on_pnl(self, pnl: PnlUpdated, ctx: HandlerContext) -> None:
        now = door.occurred_at(ctx.envelope)
        drawdown = door.fraction(pnl.drawdown or "0", "drawdown")
        daily_pnl = door.money(pnl.daily_pnl or "0", "daily_pnl")
        equity = door.money(pnl.equity or "0", "equity")
        day = now.date()
        candidate = DailyStats(day) if self.stats is None or self.stats.day != day else None
        stats = candidate or self.stats
        assert stats is not None
        probe = DailyStats(day)
        probe.record_pnl(drawdown, daily_pnl, equity)
        await self._guard(drawdown * 100, probe.daily_loss_pct)  # before any state change
        if candidate is not None:
            self.stats = candidate
            self._last_stats_at = None
        stats.record_pnl(drawdown, daily_pnl, equity)
        if self._last_stats_at is None or now - self._last_stats_at >= self.stats_interval:
            self._emit_stats(stats, ctx)

    async def _guard(self, drawdown_pct: Decimal, daily_loss_pct: Decimal) -> None:
        """Escalate the policy as far as the breach warrants, and no further than it is."""
        policy = self.policy.get_policy()
        active = worst_breach(policy.active_limits, policy.mode, drawdown_pct, daily_loss_pct)
        if active.severity < 1:
            self.reference_mode = None  # within the limits in force: the episode is over
            return
        if self.reference_mode is None:
            self.reference_mode = policy.mode
        # The tiers are measured against the limits in force when the breach began, so that
        # switching to DEFENSIVE's tighter limits does not by itself trigger the next tier.
        reference = self.reference_mode
        breach = worst_breach(policy.limits[reference], reference, drawdown_pct, daily_loss_pct)
        wanted = escalation_for(breach, policy, reduce_at=self.reduce_at, halt_at=self.halt_at)
        reason = breach.describe()
        if wanted.mode is not None:
            result = await self.policy.switch_mode(
                wanted.mode,
                expected_version=policy.version,
                changed_by=CHANGED_BY,
                reason=reason,
            )
            self.policy_changes.append(f"mode {wanted.mode.value}: {reason}")
            policy = result if isinstance(result, Policy) else self.policy.get_policy()
        if wanted.trading_state is not None:
            await self.policy.set_trading_state(
                wanted.trading_state,
                expected_version=policy.version,
                changed_by=CHANGED_BY,
                reason=reason,
            )
            self.policy_changes.append(f"state {wanted.trading_state.value}: {reason}")

    def _stats_for(self, day: date) -> DailyStats:
        if self.stats is None or self.stats.day != day:
            self.stats = DailyStats(day)
            self._last_stats_at = None
        return self.stats

    def _emit_stats(self, stats: DailyStats, ctx: HandlerContext) -> None:
        self._last_stats_at = ctx.occurred_at
        ctx.emit(
            StatsUpdated(
                trading_day=stats.day.isoformat(),
                trades=stats.trades,
                winning_trades=stats.winning_trades,
                win_rate=f"{stats.win_rate:f}",
                realized_pnl=f"{stats.realized_pnl:f}",
                max_drawdown=f"{stats.max_drawdown:f}",
                daily_loss=f"{stats.daily_loss:f}",
                as_of=ctx.envelope.occurred_at,
            ),
            partition_key="",
        )

    def snapshot_state(self) -> bytes:
        return json.dumps(
            {
                "stats": self.stats.to_json() if self.stats else None,
                "reference_mode": self.reference_mode.value if self.reference_mode else None,
            },
            sort_keys=True,
        ).encode()

    def restore_state(self, data: bytes) -> None:
        state = json.loads(data)
        self.stats = DailyStats.from_json(state["stats"]) if state["stats"] else None
        mode = state["reference_mode"]
        self.reference_mode = RiskMode(mode) if mode else None
