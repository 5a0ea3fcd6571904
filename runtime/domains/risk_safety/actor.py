"""The risk_safety actor: signals in, approvals (with size) or rejections (with a reason) out."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal

from quantum.events.v1.portfolio_pb2 import PnlUpdated, PositionClosed, PositionOpened
from quantum.events.v1.risk_pb2 import RejectReason, SignalApproved, SignalRejected
from quantum.events.v2.ai_pb2 import SignalGenerated

from runtime.core import event_checks as door
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
        now = door.occurred_at(ctx.envelope)
        _check_signal(signal)
        policy = self.policy.get_policy()
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
        now = door.occurred_at(ctx.envelope)
        equity = door.money(pnl.equity, "equity")
        daily_pnl = door.money(pnl.daily_pnl, "daily_pnl")
        self.book.record_pnl(equity, daily_pnl, now)

    @handles
    def on_position_opened(self, opened: PositionOpened, ctx: HandlerContext) -> None:
        door.occurred_at(ctx.envelope)
        symbol = self._known_symbol(opened.symbol)
        side = door.side(opened.side)
        quantity = door.positive(opened.quantity, "quantity")
        entry_price = door.positive(opened.entry_price, "entry_price")
        self.book.position_opened(symbol, side, quantity)
        self.book.marks.setdefault(symbol, entry_price)

    @handles
    def on_position_closed(self, closed: PositionClosed, ctx: HandlerContext) -> None:
        door.occurred_at(ctx.envelope)
        door.symbol(closed.symbol)
        self.book.position_closed(closed.symbol, door.side(closed.side))

    def _known_symbol(self, symbol: str) -> str:
        """A position's symbol must be one the policy allows (in any mode) or one already
        held: forged opens of other symbols would otherwise fill the open-position slots."""
        if symbol in self.book.holdings:
            return door.symbol(symbol)
        allowed: set[str] = set()
        for limits in self.policy.get_policy().limits.values():
            allowed |= limits.allowed_symbols
        return door.allowed_symbol(symbol, allowed)

    def snapshot_state(self) -> bytes:
        return json.dumps(self.book.to_json(), sort_keys=True).encode()

    def restore_state(self, data: bytes) -> None:
        self.book = Book.from_json(json.loads(data))


def _check_signal(signal: SignalGenerated) -> None:
    """A signal the checks can reason about. An empty or non-positive reference price is
    not invalid: ``decide`` rejects it with NO_PRICE; malformed text is."""
    door.identifier(signal.signal_id, "signal_id")
    door.symbol(signal.symbol)
    door.side(signal.side)
    door.fraction(signal.confidence.value, "confidence.value")
    if signal.reference_price:
        door.number(signal.reference_price, "reference_price", maximum=door.MAX_QUANTITY)
    door.optional_time(signal, "generated_at")
