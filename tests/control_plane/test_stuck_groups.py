"""A consumer group that stopped moving while behind makes health DEGRADED (issue 11)."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
from quantum.control.v1 import runtime_service_pb2 as pb
from quantum.control.v1.runtime_service_pb2 import ConsumerGroupInfo

from control_plane.domains import DomainInspector
from control_plane.health import SystemHealth
from control_plane.stuck_groups import StuckGroupWatch
from runtime.adapters.redis.operator_store import RedisOperatorStore
from runtime.core.keys import Keyspace


def group(delivered: str, lag: int, pending: int = 0) -> ConsumerGroupInfo:
    return ConsumerGroupInfo(
        stream="s", group="g", lag=lag, pending=pending, last_delivered_id=delivered
    )


def test_a_group_is_stuck_only_when_it_stays_still_while_behind_for_the_horizon() -> None:
    watch = StuckGroupWatch(stuck_after_s=10)
    assert watch.update([group("1-0", lag=5)], now=0) == []
    assert watch.update([group("1-0", lag=5)], now=9) == []
    (stuck,) = watch.update([group("1-0", lag=6)], now=10)
    assert (stuck.group, stuck.behind, stuck.still_for_s) == ("g", 6, 10)
    assert watch.update([group("2-0", lag=6)], now=11) == []  # it moved: the clock restarts
    assert watch.update([group("2-0", lag=0)], now=30) == []  # caught up: nothing to do


async def test_health_is_degraded_while_a_domains_group_does_not_move(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    stream = keyspace.stream("market.tick")
    for _ in range(3):
        await aredis.xadd(stream, {"envelope": b"x"})
    await aredis.xgroup_create(stream, keyspace.group("tick_counter"), id="0")
    store = RedisOperatorStore(aredis, keyspace)
    health = SystemHealth(store, DomainInspector(store, keyspace), cache_s=0.0, stuck_after_s=0.3)

    async def tick_counter() -> pb.ComponentHealth:
        await aredis.hset(keyspace.heartbeat("tick_counter"), "c1", str(int(time.time() * 1000)))
        components = {c.name: c for c in (await health.check()).components}
        return components["domain:tick_counter"]

    assert (await tick_counter()).status == pb.HEALTH_STATUS_HEALTHY  # 3 behind, just seen
    await asyncio.sleep(0.4)
    still = await tick_counter()
    assert still.status == pb.HEALTH_STATUS_DEGRADED
    assert "has not moved" in still.detail
    assert "3 entries behind" in still.detail
