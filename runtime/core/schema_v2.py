"""The conversions between quantum.events.v1 and quantum.events.v2.

Upcasts (v1 -> v2) never fail: v2 can say everything v1 said, and what v1 did not record
(calibration, liquidity, trade ids) becomes the UNSPECIFIED/empty value. Downcasts
(v2 -> v1) drop what v1 cannot say, and refuse (``LossyDowncast``) only where dropping would
change a number a v1 consumer acts on: fees in more than one currency.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from quantum.events.v1 import ai_pb2 as ai_v1
from quantum.events.v1 import execution_pb2 as execution_v1
from quantum.events.v2 import ai_pb2 as ai_v2
from quantum.events.v2 import execution_pb2 as execution_v2

from runtime.core.decimals import DecimalError, parse_decimal
from runtime.core.failures import InvalidEvent
from runtime.core.upcasting import LossyDowncast, SchemaConverters


def register(converters: SchemaConverters) -> None:
    """Register every v1 <-> v2 step."""
    converters.register(ai_v1.SignalGenerated, ai_v2.SignalGenerated, signal_v1_to_v2)
    converters.register(ai_v2.SignalGenerated, ai_v1.SignalGenerated, signal_v2_to_v1)
    converters.register(execution_v1.OrderFilled, execution_v2.OrderFilled, filled_v1_to_v2)
    converters.register(execution_v2.OrderFilled, execution_v1.OrderFilled, filled_v2_to_v1)


def signal_v1_to_v2(old: ai_v1.SignalGenerated) -> ai_v2.SignalGenerated:
    """The v1 confidence and model id become a Confidence with no recorded calibration."""
    new = ai_v2.SignalGenerated(
        signal_id=old.signal_id,
        symbol=old.symbol,
        side=old.side,
        reference_price=old.reference_price,
        confidence=ai_v2.Confidence(
            value=old.confidence,
            model_id=old.model_id,
            calibration_method=ai_v2.CALIBRATION_METHOD_UNSPECIFIED,
        ),
    )
    new.features.update(old.features)
    if old.HasField("generated_at"):
        new.generated_at.CopyFrom(old.generated_at)
    return new


def signal_v2_to_v1(new: ai_v2.SignalGenerated) -> ai_v1.SignalGenerated:
    """Keeps the confidence value and model id; the calibration has no place in v1."""
    old = ai_v1.SignalGenerated(
        signal_id=new.signal_id,
        symbol=new.symbol,
        side=new.side,
        confidence=new.confidence.value,
        model_id=new.confidence.model_id,
        reference_price=new.reference_price,
    )
    old.features.update(new.features)
    if new.HasField("generated_at"):
        old.generated_at.CopyFrom(new.generated_at)
    return old


def filled_v1_to_v2(old: execution_v1.OrderFilled) -> execution_v2.OrderFilled:
    """A v1 fill is an order filled by one partial fill of unknown liquidity."""
    fill = execution_v2.PartialFill(
        quantity=old.quantity,
        price=old.price,
        fee=old.fee,
        fee_currency=old.fee_currency,
        liquidity=execution_v2.LIQUIDITY_UNSPECIFIED,
    )
    new = execution_v2.OrderFilled(
        order_id=old.order_id,
        signal_id=old.signal_id,
        symbol=old.symbol,
        side=old.side,
        slippage_bps=old.slippage_bps,
        exchange=old.exchange,
        filled_quantity=old.quantity,
        average_price=old.price,
    )
    if old.fee or old.fee_currency:
        new.fees_by_currency[old.fee_currency] = old.fee
    if old.HasField("filled_at"):
        fill.filled_at.CopyFrom(old.filled_at)
        new.filled_at.CopyFrom(old.filled_at)
    new.fills.append(fill)
    return new


def filled_v2_to_v1(new: execution_v2.OrderFilled) -> execution_v1.OrderFilled:
    """Order-level totals; refuses fees in several currencies (v1 has one fee_currency)."""
    totals = (
        FillTotals(new.filled_quantity, new.average_price, dict(new.fees_by_currency))
        if new.filled_quantity
        else fill_totals(new.fills)
    )
    if len(totals.fees_by_currency) > 1:
        raise LossyDowncast(
            f"execution.order.filled for order {new.order_id!r} has fees in "
            f"{sorted(totals.fees_by_currency)}; v1 carries one fee currency. Emit v2 "
            "(QUANTUM_EMIT_VERSIONS=execution.order.filled=2) once consumers read v2."
        )
    fee_currency, fee = next(iter(totals.fees_by_currency.items()), ("", ""))
    old = execution_v1.OrderFilled(
        order_id=new.order_id,
        signal_id=new.signal_id,
        symbol=new.symbol,
        side=new.side,
        quantity=totals.quantity,
        price=totals.average_price,
        fee=fee,
        fee_currency=fee_currency,
        slippage_bps=new.slippage_bps,
        exchange=new.exchange,
    )
    if new.HasField("filled_at"):
        old.filled_at.CopyFrom(new.filled_at)
    return old


@dataclass(frozen=True, slots=True)
class FillTotals:
    """Order-level totals over partial fills, as decimal strings."""

    quantity: str
    average_price: str
    fees_by_currency: dict[str, str]


def fill_totals(fills: Iterable[execution_v2.PartialFill]) -> FillTotals:
    """Total quantity, quantity-weighted average price and fee per currency of ``fills``.

    Producers of v2 use it to fill ``filled_quantity``, ``average_price`` and
    ``fees_by_currency`` consistently with the fills.
    """
    quantity = Decimal(0)
    notional = Decimal(0)
    fees: dict[str, Decimal] = {}
    for fill in fills:
        fill_quantity = _decimal(fill.quantity, "quantity")
        quantity += fill_quantity
        notional += fill_quantity * _decimal(fill.price, "price")
        if fill.fee or fill.fee_currency:
            fees[fill.fee_currency] = fees.get(fill.fee_currency, Decimal(0)) + _decimal(
                fill.fee, "fee"
            )
    average = notional / quantity if quantity else Decimal(0)
    return FillTotals(
        quantity=_text(quantity),
        average_price=_text(average),
        fees_by_currency={currency: _text(fee) for currency, fee in fees.items()},
    )


def _decimal(text: str, what: str) -> Decimal:
    try:
        return parse_decimal(text or "0", f"partial fill {what}")
    except DecimalError as exc:  # permanent: the same fill fails the same way every time
        raise InvalidEvent(exc.field, exc.rule, text) from None


def _text(value: Decimal) -> str:
    """A plain decimal string without exponent or trailing zeros ("1.5", not "1.50E+0")."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text
