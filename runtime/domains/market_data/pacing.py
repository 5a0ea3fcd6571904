"""Pacing and sealing ticks for publication: the edge between a feed and the bus.

A feed is a plain iterator of ticks with explicit times. ``paced`` turns it into an async
iterator that follows the recorded time (scaled by ``speed``); the clock and sleep are
injected, so tests and replays need no real waiting. ``tick_envelope`` seals a tick with its
observation time as the event time, which every downstream domain uses as its clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime

from quantum.events.v1.envelope_pb2 import Envelope
from quantum.events.v1.market_pb2 import MarketTick

from runtime.core import tracing
from runtime.core.envelope import seal

PRODUCER = "market_data"


def tick_time(tick: MarketTick) -> datetime:
    """The tick's observation time (UTC)."""
    return tick.observed_at.ToDatetime(tzinfo=UTC)


async def paced(
    ticks: Iterable[MarketTick],
    *,
    speed: float | None = 1.0,
    limit: int | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[tuple[datetime, MarketTick]]:
    """Yield ``(observed_at, tick)`` at the recorded pace divided by ``speed``.

    ``speed=None`` replays as fast as the consumer takes them (still yielding to the event
    loop now and then); ``limit`` stops after that many ticks.
    """
    if speed is not None and speed <= 0:
        raise ValueError(f"speed must be > 0 (or None for as fast as possible), got {speed}")
    first: datetime | None = None
    started = clock()
    for count, tick in enumerate(ticks):
        if limit is not None and count >= limit:
            return
        at = tick_time(tick)
        if first is None:
            first = at
        if speed is None:
            if count % 256 == 0:
                await sleep(0)
        else:
            due = (at - first).total_seconds() / speed
            delay = due - (clock() - started)
            if delay > 0:
                await sleep(delay)
        yield at, tick


async def paced_batches(
    ticks: Iterable[MarketTick],
    *,
    speed: float | None = 1.0,
    max_batch: int = 500,
    limit: int | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[list[MarketTick]]:
    """Like ``paced``, but yields every tick that is due at once, up to ``max_batch``.

    Publishing a batch with one call (``EventBus.publish_envelopes``) instead of awaiting a
    round trip per tick is what lets a fast feed keep up with its recorded pace.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    if speed is not None and speed <= 0:
        raise ValueError(f"speed must be > 0 (or None for as fast as possible), got {speed}")
    first: datetime | None = None
    started = clock()
    batch: list[MarketTick] = []
    for count, tick in enumerate(ticks):
        if limit is not None and count >= limit:
            break
        if speed is not None:
            at = tick_time(tick)
            if first is None:
                first = at
            delay = (at - first).total_seconds() / speed - (clock() - started)
            if delay > 0:
                if batch:
                    yield batch
                    batch = []
                    delay = (at - first).total_seconds() / speed - (clock() - started)
                if delay > 0:
                    await sleep(delay)
        batch.append(tick)
        if len(batch) >= max_batch:
            yield batch
            batch = []
            if speed is None:
                await sleep(0)
    if batch:
        yield batch


def tick_envelope(
    tick: MarketTick,
    *,
    event_id: str | None = None,
    trace: tracing.TraceContext | None = None,
) -> Envelope:
    """Seal a tick for the ``market.tick`` stream: keyed by symbol, timed by observation.

    Give ``event_id`` and ``trace`` only for a deterministic replay (tests); a live feed
    takes fresh ones, so two runs of one seed are still distinct events.
    """
    envelope = seal(
        tick,
        producer=PRODUCER,
        partition_key=tick.symbol,
        event_id=event_id,
        trace=trace,
    )
    # The event time is the observation time; copied as is (no datetime round trip, which
    # costs more than the rest of sealing on a fast feed).
    if tick.HasField("observed_at"):
        envelope.occurred_at.CopyFrom(tick.observed_at)
    return envelope
