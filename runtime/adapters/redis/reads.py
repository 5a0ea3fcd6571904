"""Typed reads of Redis for the control plane and the composition root.

redis-py types its replies loosely (bytes or str, maybe None, depending on client options);
the callers always use a bytes client, so these functions state that once. Each is one
command (or one pipeline of the same command over several keys); what the reply means is
the caller's business.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, cast

from runtime.adapters.redis.client import RedisClient, is_cluster
from runtime.adapters.redis.errors import ResponseError
from runtime.core.operator_store import Entry as Entry
from runtime.core.operator_store import GroupProgress

# One consumer group as XINFO GROUPS describes it (field names as str or bytes).
GroupInfo = Mapping[object, object]


def _id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def xrange(
    redis: RedisClient, key: str, start: str = "-", end: str = "+", count: int | None = None
) -> list[Entry]:
    """Entries of ``key`` from ``start`` to ``end`` (inclusive; "(" makes a bound exclusive)."""
    reply = cast(
        list[tuple[bytes, dict[bytes, bytes]]] | None,
        await redis.xrange(key, min=start, max=end, count=count),
    )
    return [(_id(entry_id), fields) for entry_id, fields in reply or ()]


async def xrevrange(
    redis: RedisClient, key: str, end: str = "+", start: str = "-", count: int | None = None
) -> list[Entry]:
    """Entries of ``key`` from ``end`` down to ``start``, newest first."""
    reply = cast(
        list[tuple[bytes, dict[bytes, bytes]]] | None,
        await redis.xrevrange(key, max=end, min=start, count=count),
    )
    return [(_id(entry_id), fields) for entry_id, fields in reply or ()]


async def newest(redis: RedisClient, key: str) -> Entry | None:
    """The last entry of ``key``, or None when the stream is empty or missing."""
    reply = cast(list[tuple[bytes, dict[bytes, bytes]]] | None, await redis.xrevrange(key, count=1))
    return (_id(reply[0][0]), reply[0][1]) if reply else None


async def last_entry_ids(redis: RedisClient, streams: Sequence[str]) -> dict[str, str]:
    """Each stream's last entry id ("0-0" when it is empty or missing), in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xrevrange(stream, count=1)
        replies = await pipe.execute()
    return {
        stream: _id(reply[0][0]) if reply else "0-0"
        for stream, reply in zip(streams, replies, strict=True)
    }


async def entries_by_id(
    redis: RedisClient, key: str, entry_ids: Sequence[str]
) -> list[dict[bytes, bytes] | None]:
    """The fields of each named entry of ``key`` (None where there is no such entry)."""
    async with redis.pipeline(transaction=False) as pipe:
        for entry_id in entry_ids:
            pipe.xrange(key, min=entry_id, max=entry_id, count=1)
        replies = await pipe.execute()
    return [cast(dict[bytes, bytes], reply[0][1]) if reply else None for reply in replies]


# How often a cluster read of several streams looks again while it waits for new entries.
CLUSTER_POLL_S = 0.05


async def xread(
    redis: RedisClient, last_ids: dict[str, str], count: int, block_ms: int | None
) -> list[tuple[str, list[Entry]]]:
    """New entries of several streams after ``last_ids``, waiting up to ``block_ms`` (None:
    not at all).

    On a cluster one XREAD keeps to one slot, so the streams are read one XREAD each, in a
    pipeline (routed per master) that does not block, again every ``CLUSTER_POLL_S`` until
    something comes or ``block_ms`` has passed; the streams that have entries come oldest
    first entry first.
    """
    if is_cluster(redis):
        return await _xread_each(redis, last_ids, count, block_ms)
    streams: dict[Any, Any] = dict(last_ids)
    reply = cast(
        list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None,
        await redis.xread(streams, count=count, block=block_ms),
    )
    return [
        (_id(stream), [(_id(entry_id), fields) for entry_id, fields in entries])
        for stream, entries in reply or ()
    ]


async def _xread_each(
    redis: RedisClient, last_ids: dict[str, str], count: int, block_ms: int | None
) -> list[tuple[str, list[Entry]]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (block_ms or 0) / 1000
    while True:
        async with redis.pipeline(transaction=False) as pipe:
            for stream, last_id in last_ids.items():
                pipe.xread({stream: last_id}, count=count)
            replies = cast(
                list[list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None],
                await pipe.execute(),
            )
        found = [
            (stream, [(_id(entry_id), fields) for entry_id, fields in reply[0][1]])
            for stream, reply in zip(last_ids, replies, strict=True)
            if reply and reply[0][1]
        ]
        if found or block_ms is None or loop.time() >= deadline:
            found.sort(key=lambda item: _order(item[1][0][0]))
            return found
        await asyncio.sleep(min(CLUSTER_POLL_S, max(0.0, deadline - loop.time())))


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def lrange_all(redis: RedisClient, key: str) -> list[bytes]:
    return cast(list[bytes], await redis.lrange(key, 0, -1))


async def hmget(redis: RedisClient, key: str, fields: list[str]) -> list[bytes | None]:
    if not fields:
        return []
    return cast(list[bytes | None], await redis.hmget(key, fields))


async def hvals_each(redis: RedisClient, keys: Sequence[str]) -> list[list[bytes]]:
    """The values of each hash in ``keys`` (empty for a missing one), in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hvals(key)
        replies = await pipe.execute()
    return cast(list[list[bytes]], replies)


async def counter(redis: RedisClient, key: str) -> int:
    """The integer stored at ``key``; 0 when there is none."""
    return int(await redis.get(key) or 0)


async def groups_each(redis: RedisClient, streams: Sequence[str]) -> list[list[GroupInfo] | None]:
    """XINFO GROUPS of each stream, in one round trip; None for a stream Redis refused
    (missing, or not a stream)."""
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xinfo_groups(stream)
        replies = await pipe.execute(raise_on_error=False)
    return [None if isinstance(reply, BaseException) else reply for reply in replies]


async def read_positions(redis: RedisClient, stream: str) -> tuple[str, list[GroupProgress]] | None:
    """The stream's last entry id and where each of its groups stands; None when the stream
    is missing or empty (nothing to read)."""
    try:
        groups = await redis.xinfo_groups(stream)
        last = cast(list[tuple[bytes, object]], await redis.xrevrange(stream, count=1))
    except ResponseError:  # no such stream yet
        return None
    if not last:
        return None
    positions = [
        GroupProgress(
            _text(group["name"]),
            _text(group["last-delivered-id"]),
            int(group.get("pending") or 0),
        )
        for group in groups
    ]
    return _id(last[0][0]), positions


async def stream_counters(redis: RedisClient, stream: str) -> tuple[str, int] | None:
    """The stream's last generated id and its entries-added counter (XINFO STREAM); None
    when there is no such stream."""
    try:
        info = await redis.xinfo_stream(stream)
    except ResponseError:  # no such stream yet
        return None
    last = info.get("last-generated-id") or b"0-0"
    return last.decode() if isinstance(last, bytes) else str(last), int(info["entries-added"])
