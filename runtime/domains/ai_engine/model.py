"""The signal-model interface: the pluggable part of ai_engine.

A model sees ticks one at a time and sometimes has an opinion. It must be deterministic for
a given input sequence (no clock, no unseeded randomness), and its state must round-trip
through ``snapshot``/``restore`` so that a restarted engine continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.market_pb2 import MarketTick


@dataclass(frozen=True, slots=True)
class Signal:
    """A model's opinion: which side, how sure (in [0, 1]) and the numbers behind it."""

    side: Side.ValueType
    confidence: Decimal
    features: Mapping[str, Decimal]


class SignalModel(Protocol):
    """What ai_engine needs of a model."""

    @property
    def model_id(self) -> str:
        """Name and version, for example ``ema-crossover/1``; travels with every signal."""
        ...

    def observe(self, tick: MarketTick) -> Signal | None:
        """Take one tick; return a signal when the model has a new opinion, else None."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """The model's state as JSON-compatible data."""
        ...

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load a state made by ``snapshot``."""
        ...
