"""Typed wrappers of the few Redis stream reads the control plane makes.

redis-py types its replies loosely (bytes or str, maybe None, depending on client options);
the control plane always uses a bytes client, so these wrappers state that once.
"""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aioredis

Entry = tuple[str, dict[bytes, bytes]]


def _id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def xrange(
    redis: aioredis.Redis, key: str, start: str = "-", end: str = "+", count: int | None = None
) -> list[Entry]:
    """Entries of ``key`` from ``start`` to ``end`` (inclusive; "(" makes a bound exclusive)."""
    reply = cast(
        list[tuple[bytes, dict[bytes, bytes]]] | None,
        await redis.xrange(key, min=start, max=end, count=count),
    )
    return [(_id(entry_id), fields) for entry_id, fields in reply or ()]


async def xrevrange(
    redis: aioredis.Redis, key: str, end: str = "+", start: str = "-", count: int | None = None
) -> list[Entry]:
    """Entries of ``key`` from ``end`` down to ``start``, newest first."""
    reply = cast(
        list[tuple[bytes, dict[bytes, bytes]]] | None,
        await redis.xrevrange(key, max=end, min=start, count=count),
    )
    return [(_id(entry_id), fields) for entry_id, fields in reply or ()]


async def newest(redis: aioredis.Redis, key: str) -> Entry | None:
    """The last entry of ``key``, or None when the stream is empty or missing."""
    reply = cast(list[tuple[bytes, dict[bytes, bytes]]] | None, await redis.xrevrange(key, count=1))
    return (_id(reply[0][0]), reply[0][1]) if reply else None


async def xread(
    redis: aioredis.Redis, last_ids: dict[str, str], count: int, block_ms: int
) -> list[tuple[str, list[Entry]]]:
    """New entries of several streams after ``last_ids``, waiting up to ``block_ms``."""
    streams: dict[Any, Any] = dict(last_ids)
    reply = cast(
        list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None,
        await redis.xread(streams, count=count, block=block_ms),
    )
    return [
        (_id(stream), [(_id(entry_id), fields) for entry_id, fields in entries])
        for stream, entries in reply or ()
    ]


async def lrange_all(redis: aioredis.Redis, key: str) -> list[bytes]:
    return cast(list[bytes], await redis.lrange(key, 0, -1))


async def hmget(redis: aioredis.Redis, key: str, fields: list[str]) -> list[bytes | None]:
    if not fields:
        return []
    return cast(list[bytes | None], await redis.hmget(key, fields))
