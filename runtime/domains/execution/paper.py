"""The built-in paper exchange: fills market orders at the latest tick, deterministically.

"Latest" is by event time: an order decided at time t fills at the last tick observed at or
before t (the order's reference price stands for the tick it was decided on when that tick
has not reached execution yet). So the fill does not depend on how far the tick stream
happened to be read when the order came in: a replay, or the same run split over several
processes, fills at the same prices. A buy pays ``slippage_bps`` above that price and a sell
receives as much below (the slippage models the latency); the fee is ``fee_bps`` of the
filled notional. Prices and fees are rounded to 8 places.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from datetime import datetime
from decimal import Decimal

from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.execution_pb2 import OrderRejectReason

from runtime.domains.execution.adapter import Fill, MarketOrder, Refusal

_PLACES = Decimal("0.00000001")
_BPS = Decimal(10000)


class _PriceHistory:
    """The recent ticks of one symbol, in event-time order."""

    __slots__ = ("prices", "times")

    def __init__(self, depth: int) -> None:
        self.times: deque[datetime] = deque(maxlen=depth)
        self.prices: deque[Decimal] = deque(maxlen=depth)

    def add(self, at: datetime, price: Decimal) -> None:
        if not self.times or at >= self.times[-1]:
            self.times.append(at)
            self.prices.append(price)
            return
        # a late tick: keep the order by time (rare, so the cost of a rebuild is fine)
        pairs = sorted([*zip(self.times, self.prices, strict=True), (at, price)])
        pairs = pairs[-self.times.maxlen :] if self.times.maxlen else pairs
        self.times = deque((t for t, _ in pairs), maxlen=self.times.maxlen)
        self.prices = deque((p for _, p in pairs), maxlen=self.prices.maxlen)

    def as_of(self, at: datetime) -> tuple[datetime, Decimal] | None:
        """The last tick at or before ``at``."""
        index = bisect_right(self.times, at)
        if index == 0:
            return None
        return self.times[index - 1], self.prices[index - 1]


class PaperExchange:
    """An in-memory exchange with configurable slippage and fee, both in basis points."""

    def __init__(
        self,
        *,
        slippage_bps: Decimal = Decimal("1"),
        fee_bps: Decimal = Decimal("10"),
        fee_currency: str = "USD",
        history_depth: int = 4096,
    ) -> None:
        if slippage_bps < 0 or fee_bps < 0:
            raise ValueError(
                f"slippage_bps and fee_bps must be >= 0, got {slippage_bps} and {fee_bps}"
            )
        if history_depth < 1:
            raise ValueError(f"history_depth must be at least 1, got {history_depth}")
        self.slippage_bps = slippage_bps
        self.fee_bps = fee_bps
        self.fee_currency = fee_currency
        self.history_depth = history_depth
        self._history: dict[str, _PriceHistory] = {}

    @property
    def name(self) -> str:
        return "paper"

    def on_price(self, symbol: str, price: Decimal, at: datetime) -> None:
        history = self._history.get(symbol)
        if history is None:
            history = self._history[symbol] = _PriceHistory(self.history_depth)
        history.add(at, price)

    def last_price(self, symbol: str) -> Decimal | None:
        history = self._history.get(symbol)
        return history.prices[-1] if history is not None and history.prices else None

    async def submit(self, order: MarketOrder, at: datetime) -> Fill | Refusal:
        return self.fill(order, at)

    def fill(self, order: MarketOrder, at: datetime) -> Fill | Refusal:
        """The synchronous core of ``submit``."""
        if order.quantity <= 0:
            return Refusal(
                OrderRejectReason.ORDER_REJECT_REASON_INVALID_QUANTITY,
                f"order {order.order_id}: quantity must be > 0, got {order.quantity}",
            )
        base = self._price_as_of(order, at)
        if base is None:
            return Refusal(
                OrderRejectReason.ORDER_REJECT_REASON_NO_MARKET_PRICE,
                f"order {order.order_id}: no tick for {order.symbol} at or before "
                f"{at.isoformat()}, and no reference price, so no price to fill at",
            )
        direction = 1 if order.side == Side.SIDE_BUY else -1
        price = (base * (1 + direction * self.slippage_bps / _BPS)).quantize(_PLACES)
        fee = (order.quantity * price * self.fee_bps / _BPS).quantize(_PLACES)
        return Fill(
            price=price,
            quantity=order.quantity,
            fee=fee,
            fee_currency=self.fee_currency,
            slippage_bps=self.slippage_bps,
        )

    def _price_as_of(self, order: MarketOrder, at: datetime) -> Decimal | None:
        history = self._history.get(order.symbol)
        tick = history.as_of(at) if history is not None else None
        reference = order.reference_price
        if tick is not None and (reference is None or tick[0] >= at):
            return tick[1]
        return reference
