"""Retention never drops an unread event: history is trimmed only below what every group has
read and acknowledged, and a full stream makes publishers wait (backpressure), not lose."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.retention import RetentionPolicy
from runtime.adapters.redis.runner import DomainRunner, RunnerConfig, group_name
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from runtime.core.transport import Backpressure
from tests.integration.bus_support import running, wait_until
from tests.process.actors import TickCounter, tick

FAST = RetentionPolicy(retain=100, refresh_s=0.01, backpressure_timeout_s=10, stuck_after_s=60)


async def publish_in_chunks(bus: EventBus, first: int, last: int, chunk: int = 100) -> None:
    for start in range(first, last + 1, chunk):
        await bus.publish_many([tick("BTC", i) for i in range(start, min(start + chunk, last + 1))])
        await asyncio.sleep(0.015)  # lets the retention look again


async def test_a_stream_no_group_reads_keeps_its_newest_history_and_trims_the_rest(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, retention=FAST, metrics=RuntimeMetrics())
    try:
        await publish_in_chunks(bus, 1, 2_000)
    finally:
        await bus.close()
    assert 100 <= await aredis.xlen(keyspace.stream("market.tick")) < 400


async def test_entries_a_group_has_not_read_are_never_trimmed(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    stream = keyspace.stream("market.tick")
    await aredis.xgroup_create(stream, group_name(keyspace, "slow"), id="0", mkstream=True)
    bus = EventBus(aredis, keyspace, maxlen=5_000, retention=FAST, metrics=RuntimeMetrics())
    try:
        await publish_in_chunks(bus, 1, 2_000)
    finally:
        await bus.close()
    assert await aredis.xlen(stream) == 2_000  # 100 would be history; all 2,000 are unread


async def test_a_stopping_publisher_trims_what_its_burst_left_beyond_history(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    # The positions are read once (refresh_s is long), so the burst is never trimmed on the
    # append path: only the settle at close brings the stream back to its history.
    once = RetentionPolicy(retain=100, refresh_s=3_600, backpressure_timeout_s=10)
    stream = keyspace.stream("market.tick")
    group = group_name(keyspace, TickCounter.name)
    await aredis.xgroup_create(stream, group, id="0", mkstream=True)
    bus = EventBus(aredis, keyspace, retention=once, metrics=RuntimeMetrics())
    try:
        await publish_in_chunks(bus, 1, 2_000)
        assert await aredis.xlen(stream) == 2_000
        actor = TickCounter()
        async with running(DomainRunner(actor, aredis, keyspace, bus, RunnerConfig("c1"))):
            await wait_until(lambda: actor.counts.get("BTC") == 2_000)
            for _ in range(200):  # the runner acknowledges after its commit
                (info,) = await aredis.xinfo_groups(stream)
                if info["pending"] == 0:
                    break
                await asyncio.sleep(0.05)
        newest = (await aredis.xrevrange(stream, count=1))[0]
    finally:
        await bus.close()
    # XTRIM MAXLEN ~ frees whole nodes (100 entries each): history, at most a node more.
    assert 100 <= await aredis.xlen(stream) <= 200
    assert (await aredis.xrevrange(stream, count=1))[0] == newest


async def test_a_stopping_publisher_keeps_what_a_group_has_not_read(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    once = RetentionPolicy(retain=100, refresh_s=3_600, backpressure_timeout_s=10)
    stream = keyspace.stream("market.tick")
    await aredis.xgroup_create(stream, group_name(keyspace, "slow"), id="0", mkstream=True)
    bus = EventBus(aredis, keyspace, retention=once, metrics=RuntimeMetrics())
    try:
        await publish_in_chunks(bus, 1, 2_000)
        entries = await aredis.xrange(stream, count=1_500)
        await aredis.xreadgroup(group_name(keyspace, "slow"), "c", {stream: ">"}, count=1_500)
        await aredis.xack(stream, group_name(keyspace, "slow"), *[e[0] for e in entries])
    finally:
        await bus.close()
    # The newest max(retain, unread) entries stay: the 500 unread ones (plus node slack).
    unread = await aredis.xrange(stream, min=b"(" + entries[-1][0], count=1_000)
    assert len(unread) == 500
    assert 500 <= await aredis.xlen(stream) <= 600
    assert (await aredis.xrange(stream, count=1))[0][0] <= unread[0][0]


async def test_a_full_stream_makes_publishes_wait_until_its_group_reads(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    metrics = RuntimeMetrics()
    stream = keyspace.stream("market.tick")
    await aredis.xgroup_create(
        stream, group_name(keyspace, TickCounter.name), id="0", mkstream=True
    )
    bus = EventBus(aredis, keyspace, maxlen=100, retention=FAST, metrics=metrics)
    publishing = asyncio.create_task(publish_in_chunks(bus, 1, 300, chunk=50))
    await asyncio.sleep(0.5)
    assert not publishing.done()  # waiting for room: the stream is a full ceiling behind
    assert await aredis.xlen(stream) < 300
    assert metrics.backpressure_waits.value(stream) >= 1
    actor = TickCounter()
    async with running(DomainRunner(actor, aredis, keyspace, bus, RunnerConfig("c1", block_ms=20))):
        await asyncio.wait_for(publishing, 10)
        await wait_until(lambda: actor.counts.get("BTC") == 300)
    assert actor.out_of_order == 0  # nothing was trimmed before it was read
    await bus.close()


async def test_a_stream_full_past_the_timeout_fails_the_publish_naming_the_group(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    stream = keyspace.stream("market.tick")
    await aredis.xgroup_create(stream, group_name(keyspace, "stalled"), id="0", mkstream=True)
    policy = RetentionPolicy(retain=10, refresh_s=0.01, backpressure_timeout_s=0.3)
    bus = EventBus(aredis, keyspace, maxlen=50, retention=policy, metrics=RuntimeMetrics())
    try:
        await bus.publish_many([tick("BTC", i) for i in range(1, 51)])
        with pytest.raises(Backpressure, match="stalled"):
            await bus.publish(tick("BTC", 51))
    finally:
        await bus.close()
    assert await aredis.xlen(stream) == 50


async def test_a_stuck_group_is_reported_and_no_longer_holds_the_stream(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    metrics = RuntimeMetrics()
    stream = keyspace.stream("market.tick")
    group = group_name(keyspace, "abandoned")
    await aredis.xgroup_create(stream, group, id="0", mkstream=True)
    policy = RetentionPolicy(retain=10, refresh_s=0.01, backpressure_timeout_s=5, stuck_after_s=0.3)
    bus = EventBus(aredis, keyspace, maxlen=50, retention=policy, metrics=metrics)
    try:
        await bus.publish_many([tick("BTC", i) for i in range(1, 51)])
        await bus.publish(tick("BTC", 51))  # waits ~0.3 s, then the group no longer holds it
    finally:
        await bus.close()
    assert metrics.group_stuck.value(group, stream) == 1.0
