"""Draining at stop: wait until the hosted domains have handled everything on their streams."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from runtime.core.actor import Actor
from runtime.core.delivery import entry_order
from runtime.core.keys import Keyspace

DRAIN_TIMEOUT_S = 10.0


async def backlog_cleared(
    redis: aioredis.Redis, keyspace: Keyspace, actors: Sequence[Actor]
) -> bool:
    """True when every group of the hosted domains has read to the end and holds nothing.

    Compares each group's last-delivered id with the stream's last id rather than trusting
    XINFO's ``lag``, which Redis can only estimate once a stream has been trimmed.
    """
    for actor in actors:
        for event_type in actor.consumes():
            stream = keyspace.stream(event_type.name)
            try:
                groups = await redis.xinfo_groups(stream)
                last = cast(list[tuple[bytes, object]], await redis.xrevrange(stream, count=1))
            except ResponseError:  # no such stream yet: nothing to read
                continue
            if not last:
                continue
            last_id = entry_order(last[0][0])
            for group in groups:
                name = _text(group["name"])
                if not name.startswith(keyspace.group(actor.name)):
                    continue
                delivered = entry_order(group["last-delivered-id"])
                if int(group.get("pending") or 0) or delivered < last_id:
                    return False
    return True


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def drain(
    redis: aioredis.Redis,
    keyspace: Keyspace,
    actors: Sequence[Actor],
    timeout_s: float = DRAIN_TIMEOUT_S,
) -> bool:
    """Wait until the hosted domains have handled everything on their streams; False when
    ``timeout_s`` passed first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await backlog_cleared(redis, keyspace, actors):
            return True
        await asyncio.sleep(0.05)
    return False
