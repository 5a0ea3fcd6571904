"""The pre-trade checks: one signal, the policy and the book in; a decision out.

A pure function, so every rule can be read in one place and tested without events. Checks
run in a fixed order; the first that fails names the decision with a fixed reason code, the
limit and the value that broke it:

  HALTED -> no price -> confidence -> [a signal against an open position: close it]
  -> REDUCING -> allow-list -> daily loss -> open positions -> position notional
  -> leverage -> order size -> order rate

A signal against an open position becomes a reduce-only order for the whole position; it
skips the checks that guard new risk. Otherwise the order is sized at ``risk_per_trade_pct``
of equity, capped by the room left under ``max_position_notional`` and under
``max_leverage`` x equity, and rounded down to ``quantity_step``. Signals are read as
``quantum.events.v2.SignalGenerated`` (v1 signals arrive upcast by the runtime).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_DOWN, Decimal

from quantum.events.v1.risk_pb2 import RejectReason
from quantum.events.v2.ai_pb2 import SignalGenerated

from runtime.core.decimals import DecimalError, parse_decimal
from runtime.core.policy import Policy, TradingState
from runtime.domains.risk_safety.book import Book

_MONEY = Decimal("0.00000001")


@dataclass(frozen=True, slots=True)
class Approval:
    quantity: Decimal
    notional: Decimal
    reference_price: Decimal
    reduce_only: bool


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: RejectReason.ValueType
    detail: str
    limit: str
    actual: str


Decision = Approval | Rejection


def decide(
    signal: SignalGenerated,
    policy: Policy,
    book: Book,
    now: datetime,
    *,
    quantity_step: Decimal,
) -> Decision:
    """Approve ``signal`` with an order size, or reject it with the first check that fails."""
    limits = policy.active_limits
    mode = policy.mode.value
    if policy.trading_state is TradingState.HALTED:
        return Rejection(
            RejectReason.REJECT_REASON_TRADING_HALTED,
            f"trading is HALTED (policy v{policy.version}): no order may go out",
            TradingState.HALTED.value,
            TradingState.HALTED.value,
        )
    price = parse_price(signal.reference_price)
    if price is None:
        return Rejection(
            RejectReason.REJECT_REASON_NO_PRICE,
            f"signal {signal.signal_id} for {signal.symbol} carries no usable reference price",
            "> 0",
            signal.reference_price or "(empty)",
        )
    confidence = _decimal(signal.confidence.value)
    if confidence < limits.min_confidence:
        return Rejection(
            RejectReason.REJECT_REASON_CONFIDENCE_TOO_LOW,
            f"confidence {confidence} is below the {mode} minimum {limits.min_confidence}",
            str(limits.min_confidence),
            str(confidence),
        )

    holding = book.holdings.get(signal.symbol)
    if holding is not None and holding.side != signal.side:
        approval = Approval(
            quantity=holding.quantity,
            notional=(holding.quantity * price).quantize(_MONEY),
            reference_price=price,
            reduce_only=True,
        )
        return _rate_checked(approval, limits.max_orders_per_second, mode, book, now)

    if policy.trading_state is TradingState.REDUCING:
        return Rejection(
            RejectReason.REJECT_REASON_REDUCING_ONLY,
            f"trading is REDUCING: only orders that reduce a position may go out, and "
            f"{signal.symbol} has no opposite position to reduce",
            TradingState.REDUCING.value,
            "increases risk",
        )
    if signal.symbol not in limits.allowed_symbols:
        return Rejection(
            RejectReason.REJECT_REASON_SYMBOL_NOT_ALLOWED,
            f"{signal.symbol} is not in the {mode} allow-list",
            ",".join(sorted(limits.allowed_symbols)),
            signal.symbol,
        )
    loss_pct = book.daily_loss_pct(now)
    if loss_pct >= limits.max_daily_loss_pct:
        return Rejection(
            RejectReason.REJECT_REASON_DAILY_LOSS_LIMIT_REACHED,
            f"today's loss {loss_pct.quantize(Decimal('0.01'))}% has reached the {mode} "
            f"limit {limits.max_daily_loss_pct}%",
            str(limits.max_daily_loss_pct),
            str(loss_pct.quantize(Decimal("0.0001"))),
        )
    if holding is None and book.open_positions >= limits.max_open_positions:
        return Rejection(
            RejectReason.REJECT_REASON_MAX_OPEN_POSITIONS_REACHED,
            f"{book.open_positions} positions are open; the {mode} maximum is "
            f"{limits.max_open_positions}",
            str(limits.max_open_positions),
            str(book.open_positions),
        )
    held_notional = book.notional(signal.symbol)
    if held_notional >= limits.max_position_notional:
        return Rejection(
            RejectReason.REJECT_REASON_MAX_POSITION_NOTIONAL_EXCEEDED,
            f"the {signal.symbol} position is already worth {held_notional.quantize(_MONEY)}; "
            f"the {mode} maximum is {limits.max_position_notional}",
            str(limits.max_position_notional),
            str(held_notional.quantize(_MONEY)),
        )
    equity = book.equity
    exposure = book.exposure
    leverage_room = limits.max_leverage * equity - exposure
    if equity <= 0 or leverage_room <= 0:
        leverage = exposure / equity if equity > 0 else Decimal("Infinity")
        return Rejection(
            RejectReason.REJECT_REASON_MAX_LEVERAGE_EXCEEDED,
            f"exposure {exposure.quantize(_MONEY)} on equity {equity} is leverage "
            f"{_fmt(leverage)}; the {mode} maximum is {limits.max_leverage}",
            str(limits.max_leverage),
            _fmt(leverage),
        )
    wanted = equity * limits.risk_per_trade_pct / 100
    notional = min(wanted, limits.max_position_notional - held_notional, leverage_room)
    raw_quantity = notional / price
    quantity = raw_quantity.quantize(quantity_step, rounding=ROUND_DOWN)
    if quantity <= 0:
        raw_text = f"{raw_quantity.quantize(Decimal('1e-12')):f}"
        return Rejection(
            RejectReason.REJECT_REASON_ORDER_SIZE_ZERO,
            f"the order size {raw_text} rounds to zero at step {quantity_step} "
            f"(notional {notional.quantize(_MONEY)} at price {price})",
            str(quantity_step),
            raw_text,
        )
    approval = Approval(
        quantity=quantity,
        notional=(quantity * price).quantize(_MONEY),
        reference_price=price,
        reduce_only=False,
    )
    return _rate_checked(approval, limits.max_orders_per_second, mode, book, now)


def _rate_checked(
    approval: Approval, max_per_second: int, mode: str, book: Book, now: datetime
) -> Decision:
    recent = book.orders_in_window(now)
    if recent >= max_per_second:
        return Rejection(
            RejectReason.REJECT_REASON_ORDER_RATE_EXCEEDED,
            f"{recent} orders in the last second; the {mode} maximum is {max_per_second}/s",
            str(max_per_second),
            str(recent + 1),
        )
    return approval


def parse_price(text: str) -> Decimal | None:
    """A usable price (finite, > 0) or None."""
    try:
        price = parse_decimal(text, "reference_price")
    except DecimalError:
        return None
    return price if price > 0 else None


def _decimal(text: str) -> Decimal:
    try:
        return parse_decimal(text, "confidence")
    except DecimalError:
        return Decimal(0)


def _fmt(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.0001"))) if value.is_finite() else str(value)
