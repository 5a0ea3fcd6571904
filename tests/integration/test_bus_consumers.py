"""Partition ownership (one owner per partition, takeover, fencing), a deleted group, and
order by partition key."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.runner import DomainRunner, RunnerConfig, group_name
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from tests.integration.bus_support import running, wait_until
from tests.process.actors import TickCounter, tick

FAST = RunnerConfig("c1", block_ms=20, lease_ttl_ms=300)


async def test_a_new_owner_first_finishes_what_another_consumer_left_pending_in_order(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    stream = keyspace.stream("market.tick")
    group = group_name(keyspace, TickCounter.name)
    await aredis.xgroup_create(stream, group, id="0", mkstream=True)
    await bus.publish_many([tick("BTC", i) for i in range(1, 6)])
    taken = await aredis.xreadgroup(group, "dead", {stream: ">"}, count=3)
    assert len(taken[0][1]) == 3  # a dead consumer took three and never acknowledges
    actor = TickCounter()
    async with running(DomainRunner(actor, aredis, keyspace, bus, FAST)):
        await wait_until(lambda: actor.counts.get("BTC") == 5)
    assert actor.out_of_order == 0  # 1, 2, 3 (taken over) before 4, 5 (new)
    assert (await aredis.xpending(stream, group))["pending"] == 0


async def test_a_second_runner_of_a_partition_stands_by_until_the_owner_stops(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    first, second = TickCounter(), TickCounter()
    owner = DomainRunner(first, aredis, keyspace, bus, RunnerConfig("a", block_ms=20))
    standby = DomainRunner(second, aredis, keyspace, bus, RunnerConfig("b", block_ms=20))
    async with running(owner):
        await bus.publish(tick("BTC", 1))
        await wait_until(lambda: first.counts.get("BTC") == 1)
        async with running(standby):
            await bus.publish_many([tick("BTC", i) for i in range(2, 5)])
            await wait_until(lambda: first.counts.get("BTC") == 4)
            assert second.counts == {}  # one owner at a time
            await owner.stop()  # a clean stop releases the lease: no wait for its expiry
            await bus.publish(tick("BTC", 5))
            await wait_until(lambda: second.counts.get("BTC") == 5)  # it restored the state
    assert second.out_of_order == 0


async def test_a_dead_owners_partition_is_taken_over_when_its_lease_expires(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    lease = keyspace.lease(TickCounter.name)
    ghost_token = await aredis.incr(keyspace.fencing_tokens())
    await aredis.set(lease, f"{ghost_token} ghost/0", px=600)  # it died holding its lease
    await bus.publish(tick("BTC", 1))
    actor = TickCounter()
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with running(DomainRunner(actor, aredis, keyspace, bus, FAST)):
        await wait_until(lambda: actor.counts.get("BTC") == 1)
        took = loop.time() - started
        holder = (await aredis.get(lease)).decode()
    assert took >= 0.5  # not before the ghost's lease ran out
    assert holder.split(" ", 1)[1].startswith("c1/")
    assert int(holder.split(" ", 1)[0]) > ghost_token  # a newer fencing token


async def test_a_stale_owner_whose_lease_was_taken_cannot_commit(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    actor = TickCounter()
    runner = DomainRunner(actor, aredis, keyspace, bus, RunnerConfig("c1", block_ms=20))
    state = keyspace.state(actor.name)
    outputs = keyspace.stream("portfolio.pnl.updated")
    async with running(runner):
        await bus.publish(tick("BTC", 1))
        await wait_until(lambda: actor.counts.get("BTC") == 1)
        committed = await aredis.get(state)
        # Another process takes the partition over (as after this one was paused too long).
        await aredis.set(keyspace.lease(actor.name), "999999 usurper/1", px=60_000)
        await bus.publish(tick("BTC", 2))
        await wait_until(lambda: len(actor.seen) >= 2)  # handled in memory...
        await asyncio.sleep(0.3)
        # ...but its commit was fenced: no output, no acknowledgement, no state written.
        assert await aredis.xlen(outputs) == 1
        assert await aredis.get(state) == committed
        group = group_name(keyspace, actor.name)
        assert (await aredis.xpending(keyspace.stream("market.tick"), group))["pending"] == 1
        # It rolled its memory back to the committed state and stands by.
        await wait_until(lambda: actor.counts.get("BTC") == 1)


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


async def test_a_state_replaced_under_a_running_owner_is_reloaded_not_overwritten(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    actor = TickCounter()
    state = keyspace.state(actor.name)
    async with running(DomainRunner(actor, aredis, keyspace, bus, FAST)):
        await bus.publish_many([tick("BTC", 1), tick("BTC", 2)])
        await wait_until(lambda: actor.counts.get("BTC") == 2)
        # A state repair (control_plane.state_repair) resets the state as a MULTI/EXEC with
        # an INCR of the domain's state epoch.
        repaired = b'{"counts": {}, "last_seq": {"BTC": 2}, "ooo": 0}'
        async with aredis.pipeline(transaction=True) as pipe:
            pipe.set(state, repaired)
            pipe.incr(keyspace.state_epoch(actor.name))
            await pipe.execute()
        await bus.publish(tick("BTC", 3))
        # The runner's commit saw the epoch move: it reloaded the repaired state and handled
        # the tick again on top of it, instead of writing its own state over the repair.
        await wait_until(lambda: actor.counts == {"BTC": 1})
        await asyncio.sleep(0.1)
    assert actor.out_of_order == 0
    stored = await aredis.get(state)
    assert b'"counts": {"BTC": 1}' in stored
