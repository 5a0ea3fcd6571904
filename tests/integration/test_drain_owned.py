"""Drain checks look only at the groups a process runs, never at another partition's."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from runtime.adapters.redis.operator_store import RedisOperatorStore
from runtime.core.keys import Keyspace
from runtime.drain import backlog_cleared, drain


@dataclass
class Owned:
    group: str
    streams: list[str]


async def test_another_partitions_backlog_does_not_hold_this_process_drain(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    stream = keyspace.stream("market.tick")
    mine, theirs = keyspace.group("ai_engine", 0, 2), keyspace.group("ai_engine", 1, 2)
    await aredis.xadd(stream, {"envelope": b"x"})
    await aredis.xgroup_create(stream, mine, id="$")  # read to the end
    await aredis.xgroup_create(stream, theirs, id="0")  # one entry behind
    store = RedisOperatorStore(aredis, keyspace)
    assert await backlog_cleared(store, [Owned(mine, [stream])])
    assert not await backlog_cleared(store, [Owned(theirs, [stream])])
    assert await drain(store, [Owned(mine, [stream])], timeout_s=1.0)
