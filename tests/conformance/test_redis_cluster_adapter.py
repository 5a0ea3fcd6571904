"""The Redis Cluster engine on a 3-master cluster of the test's own: partitions on different
masters, a domain end to end, the commit order's redo safety (a commit whose acknowledgement
was lost is not handled, nor dead-lettered, twice), the policy store, a whole-cluster crash.
The key names alone (no cluster) are tested in tests/unit/test_redis_cluster_keys.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis.asyncio as aioredis
from quantum.events.v1.market_pb2 import MarketTick
from redis.exceptions import ResponseError

from runtime.adapters.redis.cluster.committer import ClusterCommitter
from runtime.adapters.redis.cluster.engine import RedisClusterEngine
from runtime.adapters.redis.cluster.keys import slot_of
from runtime.adapters.redis.policy_store import PolicyStore
from runtime.adapters.redis.retention import RetentionPolicy
from runtime.core.delivery import DeliveryLoop, RunnerConfig
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from runtime.core.partitioning import Partitioning
from runtime.core.policy.model import RiskMode
from runtime.core.publisher import Publisher
from runtime.core.transport import Backpressure, Commit
from tests.conformance.harness import new_namespace
from tests.conformance.harness_cluster import RedisClusterHarness
from tests.process.actors import TickCounter, tick

pytestmark = pytest.mark.slow

SYMBOLS = ("S0", "S1", "S2", "S3", "S5", "S7")  # crc32 mod 3: 0, 0, 2, 2, 2, 1
SPLIT = Partitioning({"market.tick": 3, "portfolio.pnl.updated": 3})


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterHarness]:
    harness = RedisClusterHarness()
    yield harness
    harness.stop()


def open_engine(cluster: RedisClusterHarness, namespace: str) -> RedisClusterEngine:
    engine = cluster.open(namespace, SPLIT)
    assert isinstance(engine, RedisClusterEngine)
    return engine


async def publish_ticks(publisher: Publisher, per_symbol: int, first: int = 1) -> int:
    for sequence in range(first, first + per_symbol):
        for symbol in SYMBOLS:
            publisher.publish_nowait(
                MarketTick(symbol=symbol, price="100.25", sequence=sequence, source="test"),
                partition_key=symbol,
            )
    await publisher.flush()
    return per_symbol * len(SYMBOLS)


def runners(
    engine: RedisClusterEngine, publisher: Publisher, partitions: int, **options: object
) -> list[DeliveryLoop]:
    return [
        engine.runner(
            TickCounter(),
            RunnerConfig(
                consumer_name=f"test-{p}",
                partition=p,
                partitions=partitions,
                block_ms=100,
                lease_ttl_ms=5_000,
                **options,  # type: ignore[arg-type]
            ),
            publisher,
        )
        for p in range(partitions)
    ]


async def outputs(engine: RedisClusterEngine) -> dict[str, int]:
    return {t: len(await engine.read(t)) for t in SPLIT.topics("portfolio.pnl.updated")}


async def wait_for_outputs(engine: RedisClusterEngine, total: int, within_s: float = 30) -> None:
    async with asyncio.timeout(within_s):
        while sum((await outputs(engine)).values()) < total:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def counts(engine: RedisClusterEngine, partitions: int) -> dict[str, int]:
    merged: dict[str, int] = {}
    for p in range(partitions):
        data = await engine.load_state(TickCounter.name, p, partitions)
        assert data is not None
        state = json.loads(data)
        assert state["ooo"] == 0, "ticks of a symbol were handled out of order"
        for symbol, n in state["counts"].items():
            assert symbol not in merged, f"{symbol} was handled by two partitions"
            merged[symbol] = n
    return merged


async def test_three_partitions_land_on_three_different_masters(
    cluster: RedisClusterHarness,
) -> None:
    engine = open_engine(cluster, new_namespace())
    try:
        await engine.router.ready()
        nodes = {
            engine.router.node_of(engine.keyspace.stream(topic))
            for topic in SPLIT.topics("market.tick")
        }
        assert len(nodes) == 3
        assert nodes == {f"127.0.0.1:{port}" for port in cluster.ports}
    finally:
        await engine.close()


@pytest.mark.parametrize("partitions", [1, 3], ids=["one-runner-reads-3-masters", "split-3"])
async def test_a_domain_runs_end_to_end_on_the_cluster(
    cluster: RedisClusterHarness, partitions: int
) -> None:
    engine = open_engine(cluster, new_namespace())
    publisher = engine.publisher(producer="test")
    loops = runners(engine, publisher, partitions)
    tasks = [asyncio.create_task(loop.run()) for loop in loops]
    try:
        total = await publish_ticks(publisher, 20)
        await wait_for_outputs(engine, total)
        await asyncio.sleep(0.3)  # a second copy of an output would show up by now
        per_topic = await outputs(engine)
        assert sum(per_topic.values()) == total
        assert all(n > 0 for n in per_topic.values()), per_topic
        assert await counts(engine, partitions) == dict.fromkeys(SYMBOLS, 20)
        for loop in loops:
            positions = await loop.subscription.positions()
            assert sum(p.pending for p in positions) == 0
    finally:
        for loop in loops:
            await loop.stop()
        await asyncio.gather(*tasks)  # a runner that failed (CROSSSLOT, say) fails the test
        await publisher.close()
        await engine.close()


class SimulatedCrash(Exception):
    """The process dies right after a commit point, before acknowledging."""


async def test_an_entry_committed_but_not_acknowledged_is_acknowledged_without_handling(
    cluster: RedisClusterHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = new_namespace()
    engine = open_engine(cluster, namespace)
    publisher = engine.publisher(producer="test")
    total = await publish_ticks(publisher, 5)
    (first,) = runners(engine, publisher, 1)
    committer = first.committer
    assert isinstance(committer, ClusterCommitter)

    async def crash(acks: dict[str, list[bytes]]) -> None:
        raise SimulatedCrash(f"before acknowledging {sum(map(len, acks.values()))} entries")

    monkeypatch.setattr(committer, "_acknowledge", crash)
    with pytest.raises(SimulatedCrash):
        await first.run()
    handled = len(cast(TickCounter, first.actor).seen)
    assert handled == total
    assert sum(p.pending for p in await first.subscription.positions()) == total
    assert sum((await outputs(engine)).values()) == total

    second_engine = open_engine(cluster, namespace)
    second_publisher = second_engine.publisher(producer="test")
    (second,) = runners(second_engine, second_publisher, 1)
    task = asyncio.create_task(second.run())
    try:
        async with asyncio.timeout(20):
            while sum(p.pending for p in await second.subscription.positions()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert cast(TickCounter, second.actor).seen == [], "a marked entry was handled again"
        assert sum((await outputs(engine)).values()) == total
        assert await counts(engine, 1) == dict.fromkeys(SYMBOLS, 5)
    finally:
        await second.stop()
        await task
        for closing in (publisher, second_publisher):
            await closing.close()
        await engine.close()
        await second_engine.close()


async def test_a_dead_letter_of_a_commit_redone_after_a_crash_is_written_once(
    cluster: RedisClusterHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A split domain: its dead-letter stream is not in its partition's slot, so the dead
    # letter is written before the commit point (step 1), and a redo must not repeat it.
    namespace = new_namespace()
    engine = open_engine(cluster, namespace)
    publisher = engine.publisher(producer="test")
    await publisher.log.append([("market.tick:0", b"not an envelope")])
    first = runners(engine, publisher, 3)[0]
    committer = first.committer
    assert isinstance(committer, ClusterCommitter)

    async def crash(acks: dict[str, list[bytes]]) -> None:
        raise SimulatedCrash("before acknowledging")

    monkeypatch.setattr(committer, "_acknowledge", crash)
    with pytest.raises(SimulatedCrash):
        await first.run()
    assert len(await engine.dead_letters(TickCounter.name)) == 1

    second_engine = open_engine(cluster, namespace)
    second_publisher = second_engine.publisher(producer="test")
    second = runners(second_engine, second_publisher, 3)[0]
    task = asyncio.create_task(second.run())
    try:
        async with asyncio.timeout(20):
            while sum(p.pending for p in await second.subscription.positions()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        letters = await engine.dead_letters(TickCounter.name)
        assert len(letters) == 1
        assert letters[0].attempts == 1
    finally:
        await second.stop()
        await task
        for closing in (publisher, second_publisher):
            await closing.close()
        await engine.close()
        await second_engine.close()


async def test_the_policy_store_writes_and_reads_on_the_cluster(
    cluster: RedisClusterHarness, tmp_path: Path
) -> None:
    engine = open_engine(cluster, new_namespace())
    store = PolicyStore(
        cast(aioredis.Redis, engine.client), engine.keyspace, state_dir=tmp_path, staleness_s=0.2
    )
    other = PolicyStore(
        cast(aioredis.Redis, engine.client),
        engine.keyspace,
        state_dir=tmp_path / "other",
        staleness_s=0.2,
    )
    await store.start()
    await other.start()
    try:
        before = store.get_policy().version
        written = await store.switch_mode(
            RiskMode.DEFENSIVE, changed_by="test:cluster", reason="a write on the cluster"
        )
        assert written.version == before + 1
        async with asyncio.timeout(10):
            while other.get_policy().version != written.version:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert other.get_policy().mode == RiskMode.DEFENSIVE
        history = await other.history()
        assert history[0].version == written.version
    finally:
        await store.stop()
        await other.stop()
        await engine.close()


async def test_the_cluster_killed_and_restarted_mid_flow_loses_nothing(
    cluster: RedisClusterHarness,
) -> None:
    engine = open_engine(cluster, new_namespace())
    publisher = engine.publisher(producer="test")
    # Small batches: many commits, so the kill falls between some of them.
    loops = runners(engine, publisher, 3, reconnect_cap_ms=300, batch_size=20)
    tasks = [asyncio.create_task(loop.run()) for loop in loops]
    try:
        first = await publish_ticks(publisher, 150)
        await asyncio.to_thread(cluster.kill)
        handled_before = sum(len(cast(TickCounter, loop.actor).seen) for loop in loops)
        publishing = asyncio.create_task(publish_ticks(publisher, 50, first=151))
        await asyncio.sleep(0.5)  # publishers and runners meet a dead cluster
        await asyncio.to_thread(cluster.restart)
        second = await asyncio.wait_for(publishing, 60)
        await wait_for_outputs(engine, first + second, within_s=60)
        await asyncio.sleep(0.3)
        assert await counts(engine, 3) == dict.fromkeys(SYMBOLS, 200), (
            f"{handled_before} of {first} ticks were handled when the cluster died"
        )
        # Outputs may repeat (a commit redone after the crash), never go missing.
        assert sum((await outputs(engine)).values()) >= first + second
    finally:
        for loop in loops:
            await loop.stop()
        await asyncio.gather(*tasks)
        await publisher.close()
        await engine.close()


async def test_a_full_partition_stream_pushes_back_on_its_own_master(
    cluster: RedisClusterHarness,
) -> None:
    engine = RedisClusterEngine.from_url(
        cluster.url,
        Keyspace(new_namespace()),
        partitioning=SPLIT,
        maxlen=50,
        retention=RetentionPolicy(retain=10, refresh_s=0.01, backpressure_timeout_s=0.3),
    )
    stream = engine.keyspace.stream("market.tick:2")
    await engine.client.xgroup_create(stream, "stalled", id="0", mkstream=True)
    publisher = engine.publisher(producer="test", metrics=RuntimeMetrics())
    try:
        # S2 is in partition 2: its stream fills up; S7 (partition 1) still has room.
        await publisher.publish_many([tick("S2", i) for i in range(1, 51)], partition_key="S2")
        with pytest.raises(Backpressure, match="stalled"):
            await publisher.publish(tick("S2", 51), partition_key="S2")
        await publisher.publish(tick("S7", 1), partition_key="S7")
        assert len(await engine.read("market.tick:2")) == 50
        assert len(await engine.read("market.tick:1")) == 1
    finally:
        await publisher.close()
        await engine.close()


async def test_a_stopping_publisher_trims_each_partition_on_its_own_master(
    cluster: RedisClusterHarness,
) -> None:
    engine = RedisClusterEngine.from_url(
        cluster.url,
        Keyspace(new_namespace()),
        partitioning=SPLIT,
        retention=RetentionPolicy(retain=10, refresh_s=3_600),
    )
    read, unread = engine.keyspace.stream("market.tick:2"), engine.keyspace.stream("market.tick:1")
    assert cluster.port_of_slot(slot_of(read)) != cluster.port_of_slot(slot_of(unread))
    for stream in (read, unread):
        await engine.client.xgroup_create(stream, "g", id="0", mkstream=True)
    publisher = engine.publisher(producer="test", metrics=RuntimeMetrics())
    try:
        await publisher.publish_many([tick("S2", i) for i in range(1, 301)], partition_key="S2")
        await publisher.publish_many([tick("S7", i) for i in range(1, 301)], partition_key="S7")
        await publisher.flush()
        assert len(await engine.read("market.tick:2")) == 300  # no trim on the append path
        entries = await engine.client.xreadgroup("g", "c", {read: ">"}, count=300)
        await engine.client.xack(read, "g", *[entry_id for entry_id, _ in entries[0][1]])
    finally:
        await publisher.close()
    try:
        # Partition 2 was read: its history (10) and at most a node (100) of slack stay.
        assert 10 <= await engine.client.xlen(read) <= 110
        assert await engine.client.xlen(unread) == 300  # nothing of it was read
    finally:
        await engine.close()


async def test_a_runner_follows_its_slots_to_another_master(cluster: RedisClusterHarness) -> None:
    engine = open_engine(cluster, new_namespace())
    publisher = engine.publisher(producer="test")
    (loop,) = runners(engine, publisher, 1)
    task = asyncio.create_task(loop.run())
    # An input stream's slot and the partition's own (state, marks, lease) each move.
    slots = [
        slot_of(engine.keyspace.stream("market.tick:0")),
        slot_of(engine.keyspace.state(TickCounter.name)),
    ]
    homes = [cluster.port_of_slot(slot) for slot in slots]
    try:
        first = await publish_ticks(publisher, 20)
        await wait_for_outputs(engine, first)
        for slot, home in zip(slots, homes, strict=True):
            elsewhere = next(p for p in cluster.ports if p != home)
            await asyncio.to_thread(cluster.move_slot, slot, elsewhere)
            assert cluster.port_of_slot(slot) == elsewhere
        second = await publish_ticks(publisher, 20, first=21)
        await wait_for_outputs(engine, first + second)
        assert await counts(engine, 1) == dict.fromkeys(SYMBOLS, 40)
    finally:
        await loop.stop()
        await task
        await publisher.close()
        await engine.close()
        for slot, home in zip(slots, homes, strict=True):  # the stream tags are shared by tests
            await asyncio.to_thread(cluster.move_slot, slot, home)


async def test_a_deleted_group_is_recreated_on_its_stream_from_the_last_acknowledged_entry(
    cluster: RedisClusterHarness,
) -> None:
    engine = open_engine(cluster, new_namespace())
    publisher = engine.publisher(producer="test")
    (loop,) = runners(engine, publisher, 1)
    actor = cast(TickCounter, loop.actor)
    task = asyncio.create_task(loop.run())
    stream = engine.keyspace.stream("market.tick:2")  # S2, S3 and S5 live here
    try:
        first = await publish_ticks(publisher, 5)
        await wait_for_outputs(engine, first)
        await engine.client.xgroup_destroy(stream, TickCounter.name)
        second = await publish_ticks(publisher, 5, first=6)
        await wait_for_outputs(engine, first + second)
    finally:
        await loop.stop()
        await task
        await publisher.close()
    try:
        assert actor.counts == dict.fromkeys(SYMBOLS, 10)
        assert actor.out_of_order == 0
        assert len(actor.seen) == first + second  # started after the last acknowledged entry
        groups = await engine.client.xinfo_groups(stream)
        assert [g["name"] for g in groups] == [TickCounter.name.encode()]
    finally:
        await engine.close()


async def test_a_commit_sent_to_a_slots_former_master_fails_as_transient_then_lands(
    cluster: RedisClusterHarness,
) -> None:
    engine = open_engine(cluster, new_namespace())
    publisher = engine.publisher(producer="test")
    committer = runners(engine, publisher, 1)[0].committer
    slot = slot_of(engine.keyspace.state(TickCounter.name))
    home = cluster.port_of_slot(slot)
    try:
        await committer.load_state()  # the slot map as it is now
        await asyncio.to_thread(
            cluster.move_slot, slot, next(p for p in cluster.ports if p != home)
        )
        with pytest.raises(ResponseError, match=r"^MOVED") as refused:
            await committer.commit(Commit(state=b'{"after": "move"}'))
        assert committer.is_transient(refused.value)  # the delivery loop retries it
        await committer.commit(Commit(state=b'{"after": "move"}'))  # on the slot's new master
        assert await engine.load_state(TickCounter.name) == b'{"after": "move"}'
    finally:
        await committer.close()
        await publisher.close()
        await engine.close()
        await asyncio.to_thread(cluster.move_slot, slot, home)


async def test_entries_read_beside_a_failed_read_are_handed_out_by_the_next_fetch(
    cluster: RedisClusterHarness,
) -> None:
    # The streams of a fetch are read one XREADGROUP each: when one fails (its group
    # deleted), the others have delivered theirs, which a new read (">") never returns again.
    engine = open_engine(cluster, new_namespace())
    publisher = engine.publisher(producer="test")
    subscription = runners(engine, publisher, 1)[0].subscription
    try:
        await subscription.open()
        total = await publish_ticks(publisher, 3)
        stream = engine.keyspace.stream("market.tick:2")
        await engine.client.xgroup_destroy(stream, TickCounter.name)
        with pytest.raises(ResponseError, match=r"^NOGROUP") as missing:
            await subscription.fetch(pending=False, count=100, block_ms=50)
        assert await subscription.recreate(missing.value, {}) == [(stream, b"0")]
        fetched = await subscription.fetch(pending=False, count=100, block_ms=50)
        assert len(fetched) == total
        assert len({d.stream for d in fetched}) == 3
    finally:
        await subscription.close()
        await publisher.close()
        await engine.close()
