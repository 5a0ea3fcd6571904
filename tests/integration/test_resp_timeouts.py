"""The lean connection's timeouts (one watchdog per connection), against the real Redis.

A reply that is late past its pipeline's timeout fails that pipeline with ``TimeoutError``,
closes the connection (later replies could no longer be matched to their callers) and fails
what waited behind it with ``ConnectionError``; the next call connects again. A blocking
``BLPOP`` on an empty key of the test's namespace is a reply that is late on purpose.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from runtime.adapters.redis.errors import is_transient
from runtime.adapters.redis.resp import RespConnection
from runtime.core.keys import Keyspace


async def test_a_reply_later_than_its_timeout_fails_the_call_and_the_next_call_reconnects(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    conn = RespConnection.of(aredis, timeout_s=0.2)
    try:
        first_id = await conn.call("CLIENT", "ID")
        started = time.monotonic()
        blocked = asyncio.ensure_future(conn.call("BLPOP", f"{keyspace.namespace}:empty", 5))
        behind = asyncio.ensure_future(conn.call("PING", timeout_s=5))
        with pytest.raises(TimeoutError, match=r"did not answer within 0\.2 s") as late:
            await blocked
        assert time.monotonic() - started < 2  # at its deadline, not when BLPOP gave up
        assert is_transient(late.value)
        with pytest.raises(ConnectionError) as lost:
            await behind
        assert is_transient(lost.value)
        assert await conn.call("PING") == b"PONG"
        assert await conn.call("CLIENT", "ID") != first_id  # a new connection
    finally:
        await conn.close()


async def test_a_call_behind_a_longer_one_times_out_at_its_own_deadline(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    conn = RespConnection.of(aredis, timeout_s=10)
    try:
        await conn.call("PING")
        started = time.monotonic()
        blocked = asyncio.ensure_future(
            conn.call("BLPOP", f"{keyspace.namespace}:empty", 5, timeout_s=8)
        )
        await asyncio.sleep(0.05)  # the BLPOP is on the wire first
        with pytest.raises(TimeoutError, match=r"within 0\.2 s"):
            await conn.call("PING", timeout_s=0.2)
        assert time.monotonic() - started < 2
        with pytest.raises(ConnectionError):
            await blocked
    finally:
        await conn.close()


async def test_calls_answered_in_time_keep_the_connection_past_many_timeouts(
    aredis: aioredis.Redis,
) -> None:
    conn = RespConnection.of(aredis, timeout_s=0.05)
    try:
        client_id = await conn.call("CLIENT", "ID")
        until = time.monotonic() + 0.4  # eight timeouts long, a call always in flight

        async def caller() -> int:
            calls = 0
            while time.monotonic() < until:
                assert await conn.pipeline([("PING",), ("PING",)]) == [b"PONG", b"PONG"]
                calls += 1
            return calls

        assert min(await asyncio.gather(caller(), caller())) > 10
        assert await conn.call("CLIENT", "ID") == client_id  # never dropped
    finally:
        await conn.close()
