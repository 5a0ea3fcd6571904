"""A simulated feed: a seeded geometric random walk over several symbols.

All randomness comes from the injected ``random.Random``, and time from the injected start
and rate, so one seed always yields the same ticks (a replay or a benchmark is repeatable).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from decimal import Decimal

from google.protobuf.timestamp_pb2 import Timestamp
from quantum.events.v1.market_pb2 import MarketTick

from runtime.core.envelope import timestamp

DEFAULT_START_PRICES: Mapping[str, Decimal] = {
    "BTC-USD": Decimal("60000.00"),
    "ETH-USD": Decimal("3000.00"),
    "SOL-USD": Decimal("150.00"),
}
_FALLBACK_START_PRICE = Decimal("100.00")
_VOLUME_STEP = Decimal("0.0001")


class SimulatedFeed:
    """Ticks for each symbol in turn; tick ``i`` is observed at ``start + i / rate`` seconds.

    ``volatility`` is the standard deviation of one tick's log return, ``drift`` its mean;
    prices are rounded to ``tick_size``; bid and ask sit ``spread_bps`` apart around the price.
    """

    def __init__(
        self,
        start_prices: Mapping[str, Decimal],
        *,
        rng: random.Random,
        start: datetime,
        rate: float = 100.0,
        volatility: float = 0.0005,
        drift: float = 0.0,
        tick_size: Decimal = Decimal("0.01"),
        spread_bps: Decimal = Decimal("2"),
        mean_volume: float = 1.0,
        source: str = "sim",
    ) -> None:
        if not start_prices:
            raise ValueError("SimulatedFeed needs at least one symbol")
        if rate <= 0:
            raise ValueError(f"rate must be > 0 ticks per second, got {rate}")
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware (UTC)")
        bad = {s: p for s, p in start_prices.items() if p <= 0}
        if bad:
            raise ValueError(f"start prices must be > 0: {bad}")
        self._symbols = list(start_prices)
        self._prices = {s: Decimal(p).quantize(tick_size) for s, p in start_prices.items()}
        self._sequences = dict.fromkeys(self._symbols, 0)
        self._rng = rng
        self._start = start
        started = timestamp(start)
        self._start_us = started.seconds * 1_000_000 + started.nanos // 1000
        self._rate = rate
        self._volatility = volatility
        self._drift = drift
        self._tick_size = tick_size
        self._half_spread = spread_bps / Decimal(20000)
        self._mean_volume = mean_volume
        self._index = 0
        self.source = source

    @classmethod
    def for_symbols(
        cls,
        symbols: Sequence[str],
        *,
        seed: int,
        start: datetime,
        rate: float = 100.0,
        volatility: float = 0.0005,
    ) -> SimulatedFeed:
        """A feed over ``symbols`` from the default start prices (100 for unknown symbols)."""
        prices = {s: DEFAULT_START_PRICES.get(s, _FALLBACK_START_PRICE) for s in symbols}
        return cls(prices, rng=random.Random(seed), start=start, rate=rate, volatility=volatility)

    @property
    def symbols(self) -> list[str]:
        return list(self._symbols)

    def next_tick(self) -> MarketTick:
        """The next tick: one random-walk step of the next symbol in turn."""
        symbol = self._symbols[self._index % len(self._symbols)]
        at_us = self._start_us + round(self._index * 1_000_000 / self._rate)
        self._index += 1
        step = math.exp(self._rng.gauss(self._drift, self._volatility))
        price = (self._prices[symbol] * Decimal(repr(step))).quantize(self._tick_size)
        if price <= 0:
            price = self._tick_size
        self._prices[symbol] = price
        self._sequences[symbol] += 1
        half = (price * self._half_spread).quantize(self._tick_size)
        volume = Decimal(repr(self._rng.expovariate(1 / self._mean_volume))).quantize(_VOLUME_STEP)
        return MarketTick(
            symbol=symbol,
            price=str(price),
            bid=str(price - half),
            ask=str(price + half),
            volume=str(volume),
            observed_at=Timestamp(seconds=at_us // 1_000_000, nanos=at_us % 1_000_000 * 1000),
            sequence=self._sequences[symbol],
            source=self.source,
        )

    def __iter__(self) -> Iterator[MarketTick]:
        """Endless ticks; bound them with ``itertools.islice`` or ``paced(..., until=...)``."""
        while True:
            yield self.next_tick()
