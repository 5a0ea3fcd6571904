"""Guarantees e, g, h: claims from dead consumers, a deleted group, order by partition key."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.runner import DomainRunner, RunnerConfig, group_name
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from tests.integration.bus_support import running, wait_until
from tests.process.actors import SlowTicks, TickCounter, tick


async def test_entries_pending_on_a_dead_consumer_are_claimed_after_the_visibility_timeout(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    stream = keyspace.stream("market.tick")
    group = group_name(keyspace, TickCounter.name)
    await aredis.xgroup_create(stream, group, id="0", mkstream=True)
    await bus.publish_many([tick("BTC", i) for i in range(1, 6)])
    taken = await aredis.xreadgroup(group, "dead", {stream: ">"}, count=10)
    assert len(taken[0][1]) == 5  # the dead consumer took them all and never acknowledges
    actor = TickCounter()
    config = RunnerConfig("live", block_ms=20, visibility_timeout_ms=300, claim_interval_ms=100)
    async with running(DomainRunner(actor, aredis, keyspace, bus, config)):
        await wait_until(lambda: actor.counts.get("BTC") == 5)
    assert actor.out_of_order == 0
    assert (await aredis.xpending(stream, group))["pending"] == 0


async def test_an_entry_still_being_handled_is_kept_alive_and_not_claimed_by_another(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    log: list[tuple[str, int]] = []

    def config(name: str) -> RunnerConfig:
        return RunnerConfig(name, block_ms=20, visibility_timeout_ms=500, claim_interval_ms=50)

    first = DomainRunner(SlowTicks(1.2, log, "a"), aredis, keyspace, bus, config("a"))
    second = DomainRunner(SlowTicks(1.2, log, "b"), aredis, keyspace, bus, config("b"))
    async with running(first), running(second):
        await asyncio.sleep(0.1)
        await bus.publish(tick("BTC", 1))
        await wait_until(lambda: len(log) >= 1)
        await asyncio.sleep(0.6)  # a second, wrongful, delivery would finish by now
    assert len(log) == 1


async def test_a_deleted_group_is_recreated_from_the_last_acknowledged_entry(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    metrics = RuntimeMetrics()
    bus = EventBus(aredis, keyspace, metrics=metrics)
    stream = keyspace.stream("market.tick")
    actor = TickCounter()
    config = RunnerConfig("c1", block_ms=50)
    async with running(DomainRunner(actor, aredis, keyspace, bus, config, metrics=metrics)):
        await bus.publish_many([tick("BTC", i) for i in range(1, 6)])
        await wait_until(lambda: actor.counts.get("BTC") == 5)
        await aredis.xgroup_destroy(stream, group_name(keyspace, actor.name))
        await bus.publish_many([tick("BTC", i) for i in range(6, 11)])
        await wait_until(lambda: actor.counts.get("BTC") == 10)
    assert actor.out_of_order == 0
    # Started after the last acknowledged entry: the first five were not even read again.
    assert metrics.skipped.value(actor.name, "market.tick") == 0
    groups = await aredis.xinfo_groups(stream)
    assert [g["name"] for g in groups] == [b"tick_counter"]


async def test_with_partition_groups_each_key_is_handled_by_one_runner_in_order(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    actors = [TickCounter(), TickCounter()]
    runners = [
        DomainRunner(
            actors[i],
            aredis,
            keyspace,
            bus,
            RunnerConfig(f"c{i}", block_ms=20, batch_size=7, partition=i, partitions=2),
        )
        for i in range(2)
    ]
    symbols = [f"S{i}" for i in range(8)]
    async with running(runners[0]), running(runners[1]):
        for seq in range(1, 51):
            await asyncio.gather(*(bus.publish(tick(s, seq), partition_key=s) for s in symbols))
        await wait_until(lambda: sum(sum(a.counts.values()) for a in actors) >= 400)
        await asyncio.sleep(0.1)
    owned = [set(a.counts) for a in actors]
    assert owned[0], "each partition owns some of the keys"
    assert owned[1], "each partition owns some of the keys"
    assert owned[0].isdisjoint(owned[1]), "a key was handled by two runners"
    assert owned[0] | owned[1] == set(symbols)
    assert all(n == 50 for a in actors for n in a.counts.values())
    assert actors[0].out_of_order == actors[1].out_of_order == 0
