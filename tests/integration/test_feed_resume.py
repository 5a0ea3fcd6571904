"""Where a restarted feed resumes: after the last tick on the stream, however many times a
publisher's retry appended a tick."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis
from quantum.events.v1.market_pb2 import MarketTick

from runtime.adapters.redis.bus import ENVELOPE_FIELD
from runtime.adapters.redis.operator_store import RedisOperatorStore
from runtime.bootstrap import feed_resume_point
from runtime.core.keys import Keyspace
from runtime.core.partitioning import Partitioning
from runtime.domains.market_data import CsvFeed, tick_envelope
from tests.process.pipeline import write_feed


async def _append(
    redis: aioredis.Redis, keyspace: Keyspace, feed: list[MarketTick], rows: list[int]
) -> None:
    envelopes = [tick_envelope(tick) for tick in feed]
    for row in rows:  # the same envelope again = a retried publish
        await redis.xadd(
            keyspace.stream("market.tick"), {ENVELOPE_FIELD: envelopes[row].SerializeToString()}
        )


async def test_a_tick_appended_twice_does_not_make_the_feed_skip_one(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    path = tmp_path / "feed.csv"
    write_feed(path, 20, seed=1)
    feed = list(CsvFeed(path))
    await _append(aredis, keyspace, feed, [0, 1, 2, 3, 3, 4])  # tick 3 twice: 6 entries
    assert (
        await feed_resume_point(
            RedisOperatorStore(aredis, keyspace), keyspace, CsvFeed(path), appended=6
        )
        == 5
    )


async def test_without_duplicates_it_resumes_after_every_appended_tick(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    path = tmp_path / "feed.csv"
    write_feed(path, 20, seed=1)
    assert (
        await feed_resume_point(
            RedisOperatorStore(aredis, keyspace), keyspace, CsvFeed(path), appended=0
        )
        == 0
    )
    await _append(aredis, keyspace, list(CsvFeed(path)), list(range(9)))
    assert (
        await feed_resume_point(
            RedisOperatorStore(aredis, keyspace), keyspace, CsvFeed(path), appended=9
        )
        == 9
    )


FOUR = Partitioning({"market.tick": 4})


async def _append_split(
    redis: aioredis.Redis, keyspace: Keyspace, feed: list[MarketTick], rows: list[int]
) -> None:
    for row in rows:
        tick = feed[row]
        await redis.xadd(
            keyspace.stream(FOUR.topic("market.tick", tick.symbol)),
            {ENVELOPE_FIELD: tick_envelope(tick).SerializeToString()},
        )


async def test_over_partitions_it_resumes_after_every_appended_tick(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    path = tmp_path / "feed.csv"
    write_feed(path, 40, seed=2)
    feed = list(CsvFeed(path))
    assert len({FOUR.topic("market.tick", t.symbol) for t in feed[:12]}) > 1
    await _append_split(aredis, keyspace, feed, list(range(12)))
    assert (
        await feed_resume_point(
            RedisOperatorStore(aredis, keyspace), keyspace, iter(feed), 12, FOUR
        )
        == 12
    )


async def test_over_partitions_it_resumes_at_the_first_tick_a_partition_lacks(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    """A crash stored a later tick of one partition but not an earlier one of another (the
    partitions' appends are not one ordered write on a cluster): the feed goes back to the
    earliest tick missing, never past it."""
    path = tmp_path / "feed.csv"
    write_feed(path, 40, seed=2)
    feed = list(CsvFeed(path))
    topic = [FOUR.topic("market.tick", t.symbol) for t in feed]
    gap = next(i for i in range(3, 12) if topic[i] != topic[11])  # not stored
    stored = [i for i in range(12) if not (topic[i] == topic[gap] and i >= gap)]
    await _append_split(aredis, keyspace, feed, stored)
    assert (
        await feed_resume_point(
            RedisOperatorStore(aredis, keyspace), keyspace, iter(feed), len(stored), FOUR
        )
        == gap
    )
