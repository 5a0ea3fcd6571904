"""The execution actor: approved signals in, orders to the exchange, order events out.

One approved signal yields at most one order: the order id is derived from the signal id,
and the ids of signals already ordered are kept (and snapshotted), so a replayed or
duplicated approval is recognised and submits nothing. A signal counts as ordered only once
the exchange has answered: when the submit raises, nothing is remembered and the retry
submits again. The very same approval event handled
again (a retry whose outputs may not have been published) gets its recorded outputs again,
with the same event ids, without a second call to the exchange.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from decimal import Decimal

from google.protobuf.message import Message
from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.execution_pb2 import (
    OrderFilled,
    OrderRejected,
    OrderRejectReason,
    OrderSubmitted,
)
from quantum.events.v1.market_pb2 import MarketTick
from quantum.events.v1.risk_pb2 import SignalApproved

from runtime.core import event_checks as door
from runtime.core.actor import Actor, HandlerContext, handles
from runtime.core.envelope import open_payload
from runtime.domains.execution.adapter import ExchangeAdapter, Fill, MarketOrder, Refusal
from runtime.domains.execution.paper import PaperExchange


def order_id_for(signal_id: str) -> str:
    """The one order id a signal can ever have."""
    return f"ord-{signal_id}"


class Execution(Actor):
    """Sends each approved signal to the exchange adapter exactly once."""

    name = "execution"

    def __init__(
        self,
        exchange: ExchangeAdapter | None = None,
        *,
        remember: int = 10_000,
        recent_outputs: int = 1_000,
    ) -> None:
        self.exchange: ExchangeAdapter = exchange if exchange is not None else PaperExchange()
        self.remember = remember
        self.recent_outputs = recent_outputs
        self.ordered: OrderedDict[str, None] = OrderedDict()
        # symbol -> signed quantity filled so far (long > 0): what reduce-only orders may cut
        self.held: dict[str, Decimal] = {}
        self._snapshot: bytes | None = None  # the runner asks once per batch; ticks change nothing
        # approval event id -> the outputs it produced, for a retry of that same event
        self._recent: OrderedDict[str, list[Message]] = OrderedDict()
        self.filled = 0
        self.refused = 0

    @handles
    def on_tick(self, tick: MarketTick, ctx: HandlerContext) -> None:
        now = door.occurred_at(ctx.envelope)
        price = door.tick(tick)
        self.exchange.on_price(tick.symbol, price, now)

    @handles
    async def on_approved(self, approved: SignalApproved, ctx: HandlerContext) -> None:
        _check_approval(approved)
        door.occurred_at(ctx.envelope)
        recorded = self._recent.get(ctx.event_id)
        if recorded is not None:
            for payload in recorded:
                ctx.emit(payload, partition_key=approved.symbol)
            return
        if approved.signal_id in self.ordered:
            return
        start = len(ctx.outputs)
        order_id = order_id_for(approved.signal_id)
        now = ctx.envelope.occurred_at
        quantity, refusal = self._checked_quantity(approved)
        ctx.emit(
            OrderSubmitted(
                order_id=order_id,
                signal_id=approved.signal_id,
                symbol=approved.symbol,
                side=approved.side,
                quantity=f"{quantity:f}" if refusal is None else approved.quantity,
                order_type="market",
                exchange=self.exchange.name,
                reduce_only=approved.reduce_only,
                submitted_at=now,
            ),
            partition_key=approved.symbol,
        )
        result: Fill | Refusal
        if refusal is not None:
            result = refusal
        else:
            order = MarketOrder(
                order_id,
                approved.symbol,
                approved.side,
                quantity,
                approved.reduce_only,
                _reference_price(approved.reference_price),
            )
            result = await self.exchange.submit(order, ctx.occurred_at)
        # Remembered only now: had submit raised, the retry must send the order again (same
        # order id, so an exchange that dedupes by client order id still sees it once).
        self._remember(approved.signal_id)
        self._snapshot = None
        if isinstance(result, Refusal):
            self.refused += 1
            ctx.emit(
                OrderRejected(
                    order_id=order_id,
                    signal_id=approved.signal_id,
                    symbol=approved.symbol,
                    side=approved.side,
                    quantity=approved.quantity,
                    reason=result.reason,
                    detail=result.detail,
                    exchange=self.exchange.name,
                    rejected_at=now,
                ),
                partition_key=approved.symbol,
            )
            self._record(ctx, start)
            return
        fill = result
        self.filled += 1
        signed = fill.quantity if approved.side == Side.SIDE_BUY else -fill.quantity
        self.held[approved.symbol] = self.held.get(approved.symbol, Decimal(0)) + signed
        ctx.emit(
            OrderFilled(
                order_id=order_id,
                signal_id=approved.signal_id,
                symbol=approved.symbol,
                side=approved.side,
                quantity=f"{fill.quantity:f}",
                price=f"{fill.price:f}",
                fee=f"{fill.fee:f}",
                fee_currency=fill.fee_currency,
                slippage_bps=f"{fill.slippage_bps:f}",
                exchange=self.exchange.name,
                filled_at=now,
            ),
            partition_key=approved.symbol,
        )
        self._record(ctx, start)

    def _checked_quantity(self, approved: SignalApproved) -> tuple[Decimal, Refusal | None]:
        """The quantity to send, or why not: a reduce-only order never opens or grows a
        position (it is cut to what is held), whatever risk_safety believed when it approved."""
        quantity = door.positive(approved.quantity, "quantity")  # checked at the door
        if not approved.reduce_only:
            return quantity, None
        held = self.held.get(approved.symbol, Decimal(0))
        buying = approved.side == Side.SIDE_BUY
        if held == 0 or (held > 0) == buying:
            return quantity, Refusal(
                OrderRejectReason.ORDER_REJECT_REASON_EXCHANGE_REFUSED,
                f"reduce-only {Side.Name(approved.side)} of {approved.quantity} "
                f"{approved.symbol} would open or grow a position: the filled position is "
                f"{held}",
            )
        return min(quantity, abs(held)), None

    def _record(self, ctx: HandlerContext, start: int) -> None:
        self._recent[ctx.event_id] = [
            open_payload(envelope, ctx.registry) for envelope in ctx.outputs[start:]
        ]
        while len(self._recent) > self.recent_outputs:
            self._recent.popitem(last=False)

    def _remember(self, signal_id: str) -> None:
        self.ordered[signal_id] = None
        while len(self.ordered) > self.remember:
            self.ordered.popitem(last=False)

    def snapshot_state(self) -> bytes:
        if self._snapshot is None:
            held = {symbol: f"{q:f}" for symbol, q in self.held.items()}
            self._snapshot = json.dumps({"ordered": list(self.ordered), "held": held}).encode()
        return self._snapshot

    def restore_state(self, data: bytes) -> None:
        state = json.loads(data)
        self.ordered = OrderedDict.fromkeys(state["ordered"])
        self.held = {s: Decimal(q) for s, q in state.get("held", {}).items()}
        self._snapshot = None


def _reference_price(text: str) -> Decimal | None:
    """The approval's reference price; empty when the decision had none (checked at the door)."""
    return door.positive(text, "reference_price") if text else None


def _check_approval(approved: SignalApproved) -> None:
    """An approval execution can act on: no order goes out for a malformed one."""
    door.identifier(approved.signal_id, "signal_id")
    door.symbol(approved.symbol)
    door.side(approved.side)
    door.positive(approved.quantity, "quantity")
    if approved.reference_price:
        door.positive(approved.reference_price, "reference_price")
    if approved.notional:
        door.money(approved.notional, "notional", minimum=Decimal(0))
    door.optional_time(approved, "decided_at")
