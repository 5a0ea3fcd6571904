"""market_data: feed adapters; publishes market.tick.

Not an actor: it consumes no event. A feed (``SimulatedFeed``, ``CsvFeed``) is a plain
iterator of ``MarketTick`` with explicit observation times; ``paced`` (one tick at a time) or
``paced_batches`` (every tick that is due, in one list) replays it at the recorded (or a
scaled) speed and ``tick_envelope`` seals each tick for the bus. The
composition root owns the publishing loop.
"""

from runtime.domains.market_data.csv_feed import CsvFeed, CsvFeedError
from runtime.domains.market_data.pacing import (
    PRODUCER,
    paced,
    paced_batches,
    tick_envelope,
    tick_time,
)
from runtime.domains.market_data.simulated import DEFAULT_START_PRICES, SimulatedFeed

__all__ = [
    "DEFAULT_START_PRICES",
    "PRODUCER",
    "CsvFeed",
    "CsvFeedError",
    "SimulatedFeed",
    "paced",
    "paced_batches",
    "tick_envelope",
    "tick_time",
]
