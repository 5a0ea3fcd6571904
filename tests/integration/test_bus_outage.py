"""Guarantee f: Redis unreachable or restarted — retries, reconnects, nothing acknowledged lost.

These tests run against a private append-only redis-server (``private_redis``) that they kill
with SIGKILL, as a crash would, and start again on the same port and data folder.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from runtime.adapters.redis.bus import BusClosed, EventBus, PublishBufferFull, PublishTimeout
from runtime.adapters.redis.runner import DomainRunner, RunnerConfig, group_name
from runtime.core.backoff import Backoff
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from runtime.core.redis_server import RedisServer
from tests.integration.bus_support import running, wait_until
from tests.process.actors import TickCounter, tick

pytestmark = pytest.mark.slow

KEYSPACE = Keyspace("outage")


@pytest.fixture
async def client(private_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(private_redis.url, socket_connect_timeout=0.5)
    yield redis
    await redis.aclose()


async def test_a_full_publish_buffer_raises_and_queued_events_land_when_redis_returns(
    private_redis: RedisServer, client: aioredis.Redis
) -> None:
    bus = EventBus(
        client, KEYSPACE, max_buffer=10, backoff=Backoff(0.02, 0.1), metrics=RuntimeMetrics()
    )
    await bus.publish(tick("BTC", 0))
    private_redis.kill()
    waiting = [asyncio.create_task(bus.publish(tick("BTC", i))) for i in range(1, 11)]
    await asyncio.sleep(0.2)
    assert not any(task.done() for task in waiting), "a publish returned before Redis had it"
    with pytest.raises(PublishBufferFull, match="max_buffer=10"):
        await bus.publish(tick("BTC", 11))
    private_redis.restart()
    envelopes = await asyncio.wait_for(asyncio.gather(*waiting), 20)
    await bus.close()

    stored = await client.xrange(KEYSPACE.stream("market.tick"))
    assert len(stored) >= 11
    assert bus.metrics.redis_errors.value("bus") >= 1
    assert len(envelopes) == 10


async def test_redis_killed_and_restarted_mid_flow_loses_nothing_acknowledged_and_resumes(
    private_redis: RedisServer, client: aioredis.Redis
) -> None:
    metrics = RuntimeMetrics()
    bus = EventBus(client, KEYSPACE, backoff=Backoff(0.02, 0.2), metrics=metrics)
    actor = TickCounter()
    config = RunnerConfig(
        "c1", block_ms=50, batch_size=50, reconnect_base_ms=20, reconnect_cap_ms=200
    )
    published: list[int] = []

    async def produce() -> None:
        for seq in range(1, 3_001):
            await bus.publish(tick("BTC", seq), partition_key="BTC")
            published.append(seq)
            if seq % 100 == 0:
                await asyncio.sleep(0.01)

    async with running(DomainRunner(actor, client, KEYSPACE, bus, config, metrics=metrics)):
        producer = asyncio.create_task(produce())
        await wait_until(lambda: actor.counts.get("BTC", 0) >= 500)
        private_redis.kill()
        await asyncio.sleep(0.5)
        handled_during_outage = actor.counts["BTC"]
        private_redis.restart()
        await asyncio.wait_for(producer, 30)
        await wait_until(lambda: actor.counts.get("BTC") == 3_000, within_s=30)

    assert handled_during_outage < 3_000
    assert actor.out_of_order == 0
    assert published == list(range(1, 3_001))
    stream = KEYSPACE.stream("market.tick")
    assert (await client.xpending(stream, group_name(KEYSPACE, actor.name)))["pending"] == 0
    # The snapshot acknowledged last (persisted with appendfsync always) matches the handling.
    restored = TickCounter()
    restored.restore_state(await client.get(f"{KEYSPACE.namespace}:state:{actor.name}"))
    assert restored.counts == {"BTC": 3_000}
    assert metrics.redis_errors.value("runner") >= 1
    await bus.close()


async def test_flush_with_a_timeout_raises_while_redis_is_away_and_keeps_the_events(
    private_redis: RedisServer, client: aioredis.Redis
) -> None:
    bus = EventBus(client, KEYSPACE, backoff=Backoff(0.02, 0.1), metrics=RuntimeMetrics())
    await bus.publish(tick("BTC", 0))
    private_redis.kill()
    waiting = [asyncio.create_task(bus.publish(tick("BTC", i))) for i in (1, 2, 3)]
    await asyncio.sleep(0)  # the publishes are queued
    with pytest.raises(PublishTimeout, match="3 events"):
        await bus.flush(timeout=0.3)
    assert not any(task.done() for task in waiting)  # still queued, still retried
    private_redis.restart()
    await asyncio.wait_for(bus.flush(), 20)
    assert len(await asyncio.gather(*waiting)) == 3
    assert await client.xlen(KEYSPACE.stream("market.tick")) >= 4
    await bus.close(timeout=5)


async def test_close_with_a_timeout_gives_up_the_unsent_events_and_says_how_many(
    private_redis: RedisServer, client: aioredis.Redis
) -> None:
    bus = EventBus(client, KEYSPACE, backoff=Backoff(0.02, 0.1), metrics=RuntimeMetrics())
    await bus.publish(tick("BTC", 0))
    private_redis.kill()
    waiting = [asyncio.create_task(bus.publish(tick("BTC", i))) for i in (1, 2)]
    await asyncio.sleep(0)  # the publishes are queued
    with pytest.raises(PublishTimeout, match="2 events"):
        await bus.close(timeout=0.3)
    for task in waiting:  # their publishers are told, never left waiting forever
        with pytest.raises(PublishTimeout):
            await asyncio.wait_for(task, 5)
    assert bus.buffered == 0
    with pytest.raises(BusClosed):
        await bus.publish(tick("BTC", 3))
