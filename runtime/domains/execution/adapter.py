"""The exchange-adapter interface: what execution needs of any exchange.

An adapter takes market orders and answers with a fill or a refusal (a typed reason). It is
told every tick, so a simulated exchange knows the market; a live adapter may ignore them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.execution_pb2 import OrderRejectReason


@dataclass(frozen=True, slots=True)
class MarketOrder:
    order_id: str
    symbol: str
    side: Side.ValueType
    quantity: Decimal
    reduce_only: bool
    # The price the order was decided at (the decision tick's), when known.
    reference_price: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Fill:
    price: Decimal
    quantity: Decimal
    fee: Decimal
    fee_currency: str
    slippage_bps: Decimal


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: OrderRejectReason.ValueType
    detail: str


class ExchangeAdapter(Protocol):
    @property
    def name(self) -> str:
        """The adapter's name on every order event, for example ``paper``."""
        ...

    def on_price(self, symbol: str, price: Decimal, at: datetime) -> None:
        """The latest traded price of ``symbol``."""
        ...

    async def submit(self, order: MarketOrder, at: datetime) -> Fill | Refusal:
        """Send one market order; ``at`` is the event time of the decision."""
        ...
