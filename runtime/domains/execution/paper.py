"""The built-in paper exchange: fills market orders at the latest tick, deterministically.

A buy pays ``slippage_bps`` above the last price and a sell receives as much below; the fee
is ``fee_bps`` of the filled notional. Rounding is fixed (prices and fees to 8 places), so
the same ticks and orders always give the same fills.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.execution_pb2 import OrderRejectReason

from runtime.domains.execution.adapter import Fill, MarketOrder, Refusal

_PLACES = Decimal("0.00000001")
_BPS = Decimal(10000)


class PaperExchange:
    """An in-memory exchange with configurable slippage and fee, both in basis points."""

    def __init__(
        self,
        *,
        slippage_bps: Decimal = Decimal("1"),
        fee_bps: Decimal = Decimal("10"),
        fee_currency: str = "USD",
    ) -> None:
        if slippage_bps < 0 or fee_bps < 0:
            raise ValueError(
                f"slippage_bps and fee_bps must be >= 0, got {slippage_bps} and {fee_bps}"
            )
        self.slippage_bps = slippage_bps
        self.fee_bps = fee_bps
        self.fee_currency = fee_currency
        self.prices: dict[str, Decimal] = {}

    @property
    def name(self) -> str:
        return "paper"

    def on_price(self, symbol: str, price: Decimal, at: datetime) -> None:
        self.prices[symbol] = price

    async def submit(self, order: MarketOrder, at: datetime) -> Fill | Refusal:
        return self.fill(order)

    def fill(self, order: MarketOrder) -> Fill | Refusal:
        """The synchronous core of ``submit``."""
        if order.quantity <= 0:
            return Refusal(
                OrderRejectReason.ORDER_REJECT_REASON_INVALID_QUANTITY,
                f"order {order.order_id}: quantity must be > 0, got {order.quantity}",
            )
        last = self.prices.get(order.symbol)
        if last is None:
            return Refusal(
                OrderRejectReason.ORDER_REJECT_REASON_NO_MARKET_PRICE,
                f"order {order.order_id}: no tick for {order.symbol} yet, so no price to fill at",
            )
        direction = 1 if order.side == Side.SIDE_BUY else -1
        price = (last * (1 + direction * self.slippage_bps / _BPS)).quantize(_PLACES)
        fee = (order.quantity * price * self.fee_bps / _BPS).quantize(_PLACES)
        return Fill(
            price=price,
            quantity=order.quantity,
            fee=fee,
            fee_currency=self.fee_currency,
            slippage_bps=self.slippage_bps,
        )
