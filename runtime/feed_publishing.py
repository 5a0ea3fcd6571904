"""The feed of ``quantum run``: which ticks a run publishes, and the publishing loop.

market_data is not an actor (it consumes nothing): its feeds are plain iterators of ticks,
and this is where a run turns one into events on the bus, at the recorded pace.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from collections.abc import Iterable, Iterator
from datetime import datetime

from quantum.events.v1.market_pb2 import MarketTick

from runtime.core import otel
from runtime.core.publisher import Publisher
from runtime.domains.market_data import (
    CsvFeed,
    SimulatedFeed,
    paced_batches,
    tick_envelope,
    tick_time,
)
from runtime.worker_command import FEED_DOMAIN


def feed_ticks(args: argparse.Namespace, start: datetime) -> Iterator[MarketTick]:
    """The ticks this run publishes: the feed, cut to ``--duration`` of feed time when the
    pace is fixed (so a run's tick count depends only on its arguments), less the first
    ``--feed-skip`` (a restarted worker resumes after the ticks already on the stream)."""
    ticks: Iterable[MarketTick]
    if args.feed is not None:
        ticks = CsvFeed(args.feed)
    else:
        ticks = SimulatedFeed.for_symbols(args.symbols, seed=args.seed, start=start, rate=args.rate)
    if args.duration is not None and args.speed is not None:
        ticks = _window(ticks, args.duration * args.speed)
    return itertools.islice(ticks, args.feed_skip, None)


def _window(ticks: Iterable[MarketTick], seconds: float) -> Iterator[MarketTick]:
    """The ticks observed less than ``seconds`` after the first one."""
    first: datetime | None = None
    for tick in ticks:
        at = tick_time(tick)
        first = first or at
        if (at - first).total_seconds() >= seconds:
            return
        yield tick


def feed_ends_by_itself(args: argparse.Namespace) -> bool:
    """True when the feed ends by itself: a recorded file, or a duration at a fixed pace."""
    return args.feed is not None or (args.duration is not None and args.speed is not None)


async def publish_feed(
    bus: Publisher, ticks: Iterable[MarketTick], speed: float | None, stop: asyncio.Event
) -> int:
    """Publish ticks at their recorded pace until the feed ends or ``stop`` is set.

    Stopping by event rather than by cancellation lets the publish in hand complete, so
    every tick the feed produced is either on the stream or was never sent.
    """
    published = 0
    publish = (  # with span export on, a span per tick, the root of its trace
        otel.traced_publish(bus.publish_envelopes, FEED_DOMAIN, from_handler=False)
        if otel.ENABLED
        else bus.publish_envelopes
    )
    async for batch in paced_batches(ticks, speed=speed):
        if stop.is_set():
            break
        await publish([tick_envelope(tick) for tick in batch])
        published += len(batch)
    return published
