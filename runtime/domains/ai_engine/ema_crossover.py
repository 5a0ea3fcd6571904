"""The default model: a fast/slow EMA crossover with volatility-scaled confidence.

Per symbol it keeps a fast and a slow exponential moving average of the price and an
exponentially weighted variance of tick returns. The regime is "up" when the fast EMA is
above the slow one by more than ``band`` volatilities, "down" when below by as much; a
signal goes out when the regime flips (the band is the hysteresis that stops a flat market
from flickering). Confidence is z / (1 + z) with z = scale x spread / volatility: a wide
spread in a calm market is a confident call. All arithmetic is Decimal, rounded to fixed
places each step, so a replay gives identical signals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.market_pb2 import MarketTick

from runtime.core.decimals import DecimalError, parse_decimal
from runtime.domains.ai_engine.model import Signal

_STATE_PLACES = Decimal("1e-12")
_FEATURE_PLACES = Decimal("1e-8")
_CONFIDENCE_PLACES = Decimal("0.0001")
_MIN_VOLATILITY = Decimal("1e-6")


@dataclass(slots=True)
class _SymbolState:
    ticks: int
    last_sequence: int
    price: Decimal
    fast: Decimal
    slow: Decimal
    variance: Decimal
    regime: int  # +1 up, -1 down, 0 not yet decided


class EmaCrossoverModel:
    """EMA crossover; ``fast``/``slow`` are EMA spans in ticks, ``warmup`` ticks before any call."""

    def __init__(
        self,
        *,
        fast: int = 8,
        slow: int = 21,
        volatility_span: int = 50,
        band: Decimal = Decimal("0.5"),
        scale: Decimal = Decimal("2.5"),
        warmup: int | None = None,
    ) -> None:
        if not 1 <= fast < slow:
            raise ValueError(
                f"EMA spans must satisfy 1 <= fast < slow, got fast={fast} slow={slow}"
            )
        if band < 0 or scale <= 0:
            raise ValueError(f"band must be >= 0 and scale > 0, got band={band} scale={scale}")
        self._fast_alpha = Decimal(2) / Decimal(fast + 1)
        self._slow_alpha = Decimal(2) / Decimal(slow + 1)
        self._vol_alpha = Decimal(2) / Decimal(volatility_span + 1)
        self._band = band
        self._scale = scale
        self._warmup = slow if warmup is None else warmup
        self._states: dict[str, _SymbolState] = {}
        self._model_id = "ema-crossover/1"

    @property
    def model_id(self) -> str:
        return self._model_id

    def observe(self, tick: MarketTick) -> Signal | None:
        price = _usable_price(tick.price)
        if price is None:
            return None  # one bad print must not poison the symbol's averages (or divide by 0)
        state = self._states.get(tick.symbol)
        if state is None:
            self._states[tick.symbol] = _SymbolState(
                ticks=1,
                last_sequence=tick.sequence,
                price=price,
                fast=price,
                slow=price,
                variance=Decimal(0),
                regime=0,
            )
            return None
        if tick.sequence and tick.sequence <= state.last_sequence:
            return None  # a duplicate or out-of-order tick says nothing new
        ret = price / state.price - 1
        state.variance = _ema(state.variance, ret * ret, self._vol_alpha)
        state.fast = _ema(state.fast, price, self._fast_alpha)
        state.slow = _ema(state.slow, price, self._slow_alpha)
        state.price = price
        state.last_sequence = tick.sequence
        state.ticks += 1
        if state.ticks < self._warmup:
            return None
        spread = (state.fast - state.slow) / state.slow
        regime = 1 if spread > 0 else -1
        if regime == state.regime or not spread:
            return None  # no flip possible: skip the square root (this runs on every tick)
        volatility = max(state.variance.sqrt(), _MIN_VOLATILITY)
        strength = abs(spread) / volatility
        if strength <= self._band:
            return None
        state.regime = regime
        z = self._scale * strength
        confidence = (z / (1 + z)).quantize(_CONFIDENCE_PLACES)
        return Signal(
            side=Side.SIDE_BUY if regime > 0 else Side.SIDE_SELL,
            confidence=confidence,
            features={
                "ema_fast": state.fast.quantize(_FEATURE_PLACES),
                "ema_slow": state.slow.quantize(_FEATURE_PLACES),
                "spread": spread.quantize(_FEATURE_PLACES),
                "volatility": volatility.quantize(_FEATURE_PLACES),
            },
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            symbol: {
                "ticks": s.ticks,
                "last_sequence": s.last_sequence,
                "price": str(s.price),
                "fast": str(s.fast),
                "slow": str(s.slow),
                "variance": str(s.variance),
                "regime": s.regime,
            }
            for symbol, s in self._states.items()
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self._states = {
            symbol: _SymbolState(
                ticks=int(s["ticks"]),
                last_sequence=int(s["last_sequence"]),
                price=Decimal(s["price"]),
                fast=Decimal(s["fast"]),
                slow=Decimal(s["slow"]),
                variance=Decimal(s["variance"]),
                regime=int(s["regime"]),
            )
            for symbol, s in state.items()
        }


def _ema(previous: Decimal, value: Decimal, alpha: Decimal) -> Decimal:
    return (previous + alpha * (value - previous)).quantize(_STATE_PLACES)


def _usable_price(text: str) -> Decimal | None:
    """The tick's price, or None when it is not a finite decimal > 0 (skipped, as portfolio
    and execution skip it)."""
    try:
        price = parse_decimal(text, "price")
    except DecimalError:
        return None
    return price if price > 0 else None
