"""The risk_safety actor: signals in, approvals (with size) or rejections (with a reason) out."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal

from quantum.events.v1.portfolio_pb2 import PnlUpdated, PositionClosed, PositionOpened
from quantum.events.v1.risk_pb2 import RejectReason, SignalApproved, SignalRejected
from quantum.events.v2.ai_pb2 import SignalGenerated

from runtime.core.actor import Actor, HandlerContext, handles
from runtime.core.policy.codec import mode_to_proto
from runtime.core.policy.ports import PolicyReader
from runtime.domains.risk_safety.book import Book
from runtime.domains.risk_safety.checks import Approval, decide, parse_price


class RiskSafety(Actor):
    """Pre-trade checks against the live policy; reads ``get_policy()`` once per signal.

    Takes signals at schema v2 (the runtime upcasts v1 signals), so one handler serves both.
    """

    name = "risk_safety"

    def __init__(
        self,
        policy: PolicyReader,
        *,
        starting_equity: Decimal = Decimal("100000"),
        quantity_step: Decimal = Decimal("0.000001"),
    ) -> None:
        self.policy = policy
        self.book = Book(starting_equity)
        self.quantity_step = quantity_step
        self.approved = 0
        self.rejected: Counter[str] = Counter()

    @handles
    def on_signal(self, signal: SignalGenerated, ctx: HandlerContext) -> None:
        policy = self.policy.get_policy()
        now = ctx.occurred_at
        price = parse_price(signal.reference_price)
        if price is not None:  # else decide() rejects the signal with NO_PRICE
            self.book.marks[signal.symbol] = price
        decision = decide(signal, policy, self.book, now, quantity_step=self.quantity_step)
        if isinstance(decision, Approval):
            self.book.book_order(signal.symbol, signal.side, decision.quantity, now)
            self.approved += 1
            ctx.emit(
                SignalApproved(
                    signal_id=signal.signal_id,
                    symbol=signal.symbol,
                    side=signal.side,
                    quantity=f"{decision.quantity:f}",
                    notional=f"{decision.notional:f}",
                    reference_price=f"{decision.reference_price:f}",
                    policy_version=policy.version,
                    mode=mode_to_proto(policy.mode),
                    reduce_only=decision.reduce_only,
                    decided_at=ctx.envelope.occurred_at,
                ),
                partition_key=signal.symbol,
            )
            return
        self.rejected[RejectReason.Name(decision.reason)] += 1
        ctx.emit(
            SignalRejected(
                signal_id=signal.signal_id,
                symbol=signal.symbol,
                side=signal.side,
                reason=decision.reason,
                detail=decision.detail,
                limit=decision.limit,
                actual=decision.actual,
                policy_version=policy.version,
                mode=mode_to_proto(policy.mode),
                decided_at=ctx.envelope.occurred_at,
            ),
            partition_key=signal.symbol,
        )

    @handles
    def on_pnl(self, pnl: PnlUpdated, ctx: HandlerContext) -> None:
        self.book.record_pnl(Decimal(pnl.equity), Decimal(pnl.daily_pnl), ctx.occurred_at)

    @handles
    def on_position_opened(self, opened: PositionOpened, ctx: HandlerContext) -> None:
        self.book.position_opened(opened.symbol, opened.side, Decimal(opened.quantity))
        self.book.marks.setdefault(opened.symbol, Decimal(opened.entry_price))

    @handles
    def on_position_closed(self, closed: PositionClosed, ctx: HandlerContext) -> None:
        self.book.position_closed(closed.symbol, closed.side)

    def snapshot_state(self) -> bytes:
        return json.dumps(self.book.to_json(), sort_keys=True).encode()

    def restore_state(self, data: bytes) -> None:
        self.book = Book.from_json(json.loads(data))
