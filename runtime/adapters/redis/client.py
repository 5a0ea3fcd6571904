"""The Redis client as the rest of the system names it: a type, how one is opened, a PING.

The control plane and the composition root hold a client and pass it around, but never
import redis-py themselves (import-linter): they name the client ``RedisClient`` and open
it with ``open_client``; every command they need is a function of ``reads`` or ``admin``.
"""

from __future__ import annotations

from typing import TypeAlias

import redis.asyncio

# The asyncio client of redis-py, replying bytes (the control plane never asks for strings).
RedisClient: TypeAlias = redis.asyncio.Redis


def open_client(
    url: str, *, socket_connect_timeout: float, socket_timeout: float | None = None
) -> RedisClient:
    """A client for ``url`` (redis://, rediss://, unix://); connects on its first command."""
    if socket_timeout is None:
        return RedisClient.from_url(url, socket_connect_timeout=socket_connect_timeout)
    return RedisClient.from_url(
        url, socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout
    )


async def ping(redis: RedisClient) -> None:
    """One PING; raises when Redis does not answer or refuses the client's user."""
    await redis.ping()
