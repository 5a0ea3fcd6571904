"""The control plane on a Redis Cluster (a 3-master cluster of the test's own), its streams
split over partitions: the policy, reads of a partitioned type, dead letters redriven and
purged, a state repair, a trace committed by a runner on the cluster, the live feed, health.
And reads of a partitioned type on a single Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
import redis.asyncio as aioredis
from google.protobuf.field_mask_pb2 import FieldMask
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from quantum.control.v1 import policy_service_pb2 as policy_pb
from quantum.control.v1 import replay_service_pb2 as pb
from quantum.control.v1 import runtime_service_pb2 as runtime_pb
from quantum.control.v1 import trace_service_pb2 as trace_pb
from quantum.control.v1.policy_service_pb2_grpc import PolicyServiceStub
from quantum.control.v1.replay_service_pb2_grpc import ReplayServiceStub
from quantum.control.v1.runtime_service_pb2_grpc import RuntimeServiceStub
from quantum.control.v1.trace_service_pb2_grpc import TraceServiceStub
from quantum.events.v1 import policy_pb2
from quantum.events.v1.envelope_pb2 import Envelope
from quantum.events.v1.risk_pb2 import (
    REJECT_REASON_CONFIDENCE_TOO_LOW,
    REJECT_REASON_SYMBOL_NOT_ALLOWED,
    SignalRejected,
)

from control_plane.auth import Role, TokenTable
from control_plane.config import ControlPlaneConfig
from control_plane.server import ControlPlane
from runtime import report
from runtime.adapters.redis import reads
from runtime.adapters.redis.admin import DeadLetterRedrive, delete_matching
from runtime.adapters.redis.client import RedisClient, keyspace_for, open_client
from runtime.adapters.redis.cluster.engine import RedisClusterEngine
from runtime.adapters.redis.cluster.keys import ClusterKeyspace, slot_of
from runtime.adapters.redis.operator_store import RedisOperatorStore
from runtime.adapters.redis.policy_store import PolicyStore
from runtime.adapters.redis.publishers import StreamPublisher, open_publisher
from runtime.core.delivery import DeliveryLoop, RunnerConfig
from runtime.core.envelope import seal
from runtime.core.keys import Keyspace
from runtime.core.partitioning import Partitioning
from runtime.core.redis_server import free_port
from tests.conformance.harness import new_namespace
from tests.conformance.harness_cluster import RedisClusterHarness
from tests.control_plane.support import tick_envelopes, wait_until
from tests.process.actors import TickCounter, tick

pytestmark = pytest.mark.slow

SPLIT = Partitioning({"market.tick": 3, "portfolio.pnl.updated": 3})
SYMBOLS = ("S0", "S1", "S2", "S3", "S5", "S7")  # crc32 mod 3: 0, 0, 2, 2, 2, 1
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterHarness]:
    harness = RedisClusterHarness()
    yield harness
    harness.stop()


@dataclass
class Plane:
    plane: ControlPlane
    store: PolicyStore
    bus: StreamPublisher
    redis: RedisClient
    keyspace: Keyspace
    channel: aio.Channel
    viewer: tuple[tuple[str, str], ...]
    operator: tuple[tuple[str, str], ...]

    def replay(self) -> ReplayServiceStub:
        return ReplayServiceStub(self.channel)


async def start_plane(
    url: str,
    namespace: str,
    state_dir: Path,
    partitioning: Partitioning,
    *,
    own_publisher: bool = False,
) -> Plane:
    """A control plane as ``quantum control-plane`` builds one for ``url``; it publishes
    through the test's bus unless ``own_publisher`` (then through one of its own)."""
    redis = open_client(url, socket_timeout=5.0, socket_connect_timeout=2.0)
    keyspace = keyspace_for(url, namespace, partitioning)
    viewer, operator = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    tokens = TokenTable([("vera", Role.VIEWER, viewer), ("otto", Role.OPERATOR, operator)])
    store = PolicyStore(redis, keyspace, state_dir=state_dir)
    await store.start()
    bus = open_publisher(redis, keyspace, producer="test", partitioning=partitioning)
    plane = ControlPlane(
        RedisOperatorStore(redis, keyspace),
        keyspace,
        store,
        config=ControlPlaneConfig(grpc_addr="127.0.0.1:0", metrics_addr=""),
        tokens=tokens,
        domain_factories={"tick_counter": TickCounter},
        publisher=None if own_publisher else bus,
        partitioning=partitioning,
    )
    port = await plane.start()
    return Plane(
        plane,
        store,
        bus,
        redis,
        keyspace,
        aio.insecure_channel(f"127.0.0.1:{port}"),
        (("authorization", f"Bearer {viewer}"),),
        (("authorization", f"Bearer {operator}"),),
    )


async def stop_plane(p: Plane) -> None:
    async with asyncio.timeout(30):
        await p.channel.close()
        await p.plane.stop(grace=0)
        await p.bus.close()
        await p.store.stop()
        await p.redis.aclose()


@pytest.fixture
async def on_cluster(cluster: RedisClusterHarness, tmp_path: Path) -> AsyncIterator[Plane]:
    async with asyncio.timeout(30):
        running = await start_plane(cluster.url, new_namespace(), tmp_path, SPLIT)
    yield running
    await stop_plane(running)


def engine_of(cluster: RedisClusterHarness, p: Plane) -> RedisClusterEngine:
    engine = cluster.open(p.keyspace.namespace, SPLIT)
    assert isinstance(engine, RedisClusterEngine)
    return engine


def ticks(per_symbol: int) -> list[Envelope]:
    return [
        seal(tick(symbol, n), producer="market_data", partition_key=symbol)
        for n in range(1, per_symbol + 1)
        for symbol in SYMBOLS
    ]


async def read_events(p: Plane, event_type: str) -> list[pb.ReadEventsResponse]:
    request = pb.ReadEventsRequest(range=pb.EventRange(event_type=event_type))
    return [r async for r in p.replay().ReadEvents(request, metadata=p.viewer)]


@contextlib.asynccontextmanager
async def tick_counters(
    engine: RedisClusterEngine, partitions: int = 1
) -> AsyncIterator[list[DeliveryLoop]]:
    """Tick counters (``partitions`` of them) running on the cluster; stopped after."""
    publisher = engine.publisher(producer="runner")
    loops = [
        engine.runner(
            TickCounter(),
            RunnerConfig(
                consumer_name=f"test-{n}", partition=n, partitions=partitions, block_ms=100
            ),
            publisher,
        )
        for n in range(partitions)
    ]
    tasks = [asyncio.create_task(loop.run()) for loop in loops]
    try:
        yield loops
    finally:
        for loop in loops:
            await loop.stop()
        await asyncio.gather(*tasks)  # a runner that failed fails the test
        await publisher.close()


async def handled(loops: list[DeliveryLoop], count: int) -> None:
    """Until the loops' actors handled ``count`` ticks between them."""
    async with asyncio.timeout(30):
        while sum(len(cast(TickCounter, loop.actor).seen) for loop in loops) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


# -- the client and the keys --------------------------------------------------------------


def test_a_cluster_url_gives_a_cluster_client_and_hash_tagged_keys(
    cluster: RedisClusterHarness,
) -> None:
    keyspace = keyspace_for(cluster.url, "q", SPLIT)
    assert isinstance(keyspace, ClusterKeyspace)
    assert keyspace.partitioning == SPLIT
    assert type(keyspace_for("redis://127.0.0.1:6379/0", "q", SPLIT)) is Keyspace
    streams = {slot_of(keyspace.stream(t)) for t in SPLIT.topics("market.tick")}
    assert len(streams) == 3


# -- the services on the cluster ----------------------------------------------------------


async def test_the_policy_is_read_and_updated_on_the_cluster(on_cluster: Plane) -> None:
    stub = PolicyServiceStub(on_cluster.channel)
    before = (await stub.GetPolicy(policy_pb.GetPolicyRequest(), metadata=on_cluster.viewer)).policy
    response = await stub.UpdatePolicy(
        policy_pb.UpdatePolicyRequest(
            policy=policy_pb2.Policy(normal=policy_pb2.ModeLimits(max_leverage="2.5")),
            update_mask=FieldMask(paths=["normal.max_leverage"]),
            expected_version=before.version,
            reason="tighten on the cluster",
        ),
        metadata=on_cluster.operator,
    )
    assert response.policy.version == before.version + 1
    after = (await stub.GetPolicy(policy_pb.GetPolicyRequest(), metadata=on_cluster.viewer)).policy
    assert after.normal.max_leverage == "2.5"
    assert after.version == before.version + 1


async def test_read_events_covers_every_partition_of_a_type_on_the_cluster(
    on_cluster: Plane,
) -> None:
    published = ticks(3)
    await on_cluster.bus.publish_envelopes(published)
    events = [r.event for r in await read_events(on_cluster, "market.tick")]
    assert sorted(e.envelope.event_id for e in events) == sorted(e.event_id for e in published)
    assert {e.stream for e in events} == {
        on_cluster.keyspace.stream(t) for t in SPLIT.topics("market.tick")
    }
    for symbol in SYMBOLS:  # each key's events in their order
        mine = [e for e in events if e.envelope.partition_key == symbol]
        assert [int(json.loads(e.payload_json)["sequence"]) for e in mine] == [1, 2, 3]


async def test_a_publishing_replay_on_the_cluster_puts_outputs_on_their_partitions(
    cluster: RedisClusterHarness, tmp_path: Path
) -> None:
    p = await start_plane(cluster.url, new_namespace(), tmp_path, SPLIT, own_publisher=True)
    try:
        await p.bus.publish_envelopes(ticks(2))
        request = pb.ReplayToDomainRequest(
            domain="tick_counter", range=pb.EventRange(event_type="market.tick"), publish=True
        )
        responses = [r async for r in p.replay().ReplayToDomain(request, metadata=p.operator)]
        assert [r.processed for r in responses] == list(range(1, 2 * len(SYMBOLS) + 1))
        assert all(r.published and not r.error for r in responses)
        outputs = [r.event for r in await read_events(p, "portfolio.pnl.updated")]
        assert len(outputs) == 2 * len(SYMBOLS)
        for event in outputs:  # each on the partition of its key
            topic = SPLIT.topic("portfolio.pnl.updated", event.envelope.partition_key)
            assert event.stream == p.keyspace.stream(topic)
    finally:
        await stop_plane(p)


async def test_the_live_feed_follows_every_partition_on_the_cluster(on_cluster: Plane) -> None:
    call = TraceServiceStub(on_cluster.channel).SubscribeTraces(
        trace_pb.SubscribeTracesRequest(event_types=["market.tick"]), metadata=on_cluster.viewer
    )
    await wait_until(lambda: on_cluster.plane.live_feed.following)
    published = ticks(2)
    await on_cluster.bus.publish_envelopes(published)
    received = [(await asyncio.wait_for(call.read(), 10)).event for _ in published]
    assert sorted(e.envelope.event_id for e in received) == sorted(e.event_id for e in published)
    assert len({e.stream for e in received}) == 3
    call.cancel()


async def test_a_dead_letter_on_the_cluster_is_listed_and_redriven_once(
    cluster: RedisClusterHarness, on_cluster: Plane
) -> None:
    engine = engine_of(cluster, on_cluster)
    try:
        publisher = engine.publisher(producer="test")
        await publisher.log.append([("market.tick:1", b"not an envelope")])
        await publisher.close()
        async with tick_counters(engine), asyncio.timeout(20):
            while not await engine.dead_letters(TickCounter.name):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        listed = await on_cluster.replay().ListDeadLetters(
            pb.ListDeadLettersRequest(domain="tick_counter"), metadata=on_cluster.viewer
        )
        (letter,) = listed.dead_letters
        stream = on_cluster.keyspace.stream("market.tick:1")
        assert letter.original_stream == stream
        request = pb.RedriveDeadLettersRequest(domain="tick_counter")
        first = await on_cluster.replay().RedriveDeadLetters(request, metadata=on_cluster.operator)
        again = await on_cluster.replay().RedriveDeadLetters(request, metadata=on_cluster.operator)
        assert (first.redriven, again.redriven, again.already_redriven) == (1, 0, 1)
        copies = [e for e in await engine.read("market.tick:1") if e[1] == b"not an envelope"]
        assert len(copies) == 2  # the original and one redrive
        listed = await on_cluster.replay().ListDeadLetters(
            pb.ListDeadLettersRequest(domain="tick_counter"), metadata=on_cluster.viewer
        )
        assert listed.dead_letters[0].redriven_entry_id == copies[1][0]
    finally:
        await engine.close()


async def test_a_redrive_retried_after_a_crash_between_its_two_steps_publishes_once(
    on_cluster: Plane,
) -> None:
    keyspace = on_cluster.keyspace
    stream, redriven = keyspace.stream("market.tick:2"), keyspace.redriven("tick_counter")
    assert slot_of(stream) != slot_of(redriven)
    redrive = DeadLetterRedrive(on_cluster.redis)
    assert await redrive(redriven, stream, "5-0", b"payload", 1000)
    await on_cluster.redis.hdel(redriven, "5-0")  # as if it died before noting it here
    assert not await redrive(redriven, stream, "5-0", b"payload", 1000)
    ((entry_id, _),) = await reads.xrange(on_cluster.redis, stream)
    assert await reads.hmget(on_cluster.redis, redriven, ["5-0"]) == [entry_id.encode()]


async def test_a_purge_on_the_cluster_deletes_the_letters_and_is_audited(
    on_cluster: Plane,
) -> None:
    keyspace = on_cluster.keyspace
    dlq = keyspace.dlq("tick_counter")
    for _ in range(2):
        await on_cluster.redis.xadd(dlq, {"original_stream": "x", "reason": "r"})
    ids = [entry_id for entry_id, _ in await reads.xrange(on_cluster.redis, dlq)]
    assert slot_of(dlq) != slot_of(keyspace.audit())
    response = await on_cluster.replay().PurgeDeadLetters(
        pb.PurgeDeadLettersRequest(domain="tick_counter", all=True), metadata=on_cluster.operator
    )
    assert sorted(response.entry_ids) == sorted(ids)
    assert await on_cluster.redis.xlen(dlq) == 0
    ((_, audit),) = await reads.xrange(on_cluster.redis, keyspace.audit())
    assert audit[b"action"] == b"dead_letters.purge"
    assert audit[b"by"] == b"operator:otto"
    assert audit[b"count"] == b"2"


async def test_a_state_repair_on_the_cluster_replaces_a_partition_state_and_bumps_its_epoch(
    cluster: RedisClusterHarness, on_cluster: Plane
) -> None:
    engine = engine_of(cluster, on_cluster)
    try:
        await on_cluster.bus.publish_envelopes(ticks(2))
        async with tick_counters(engine, partitions=3) as loops:
            await handled(loops, len(SYMBOLS) * 2)
        assert await engine.load_state(TickCounter.name, 2, 3) is not None
        response = await on_cluster.replay().RepairDomainState(
            pb.RepairDomainStateRequest(
                domain="tick_counter",
                mode=pb.REPAIR_MODE_REBUILD,
                partition=2,
                partitions=3,
                reason="rebuild on the cluster",
            ),
            metadata=on_cluster.operator,
        )
        keyspace = on_cluster.keyspace
        group = keyspace.group(TickCounter.name, 2, 3)
        assert response.repair.state_key == keyspace.state(TickCounter.name, 2, 3)
        assert response.repair.state_epoch == 1
        assert await on_cluster.redis.get(keyspace.state_epoch(group)) == b"1"
        rebuilt = json.loads(await engine.load_state(TickCounter.name, 2, 3) or b"{}")
        assert rebuilt["counts"] == {"S2": 2, "S3": 2, "S5": 2}  # crc32 mod 3 == 2
        history = await on_cluster.replay().ListStateRepairs(
            pb.ListStateRepairsRequest(domain="tick_counter"), metadata=on_cluster.viewer
        )
        assert [r.reason for r in history.repairs] == ["rebuild on the cluster"]
    finally:
        await engine.close()


async def test_get_trace_and_list_domains_show_a_runner_on_the_cluster(
    cluster: RedisClusterHarness, on_cluster: Plane
) -> None:
    engine = engine_of(cluster, on_cluster)
    try:
        root = seal(tick("S5", 1), producer="market_data", partition_key="S5")
        await on_cluster.bus.publish_envelopes([root])
        async with tick_counters(engine) as loops:
            await handled(loops, 1)
        response = await TraceServiceStub(on_cluster.channel).GetTrace(
            trace_pb.GetTraceRequest(trace_id=root.trace_id), metadata=on_cluster.viewer
        )
        types = [e.envelope.event_type for e in response.events]
        assert types == ["market.tick", "portfolio.pnl.updated"]
        assert response.events[1].envelope.causation_id == root.event_id
        assert response.events[0].stream == on_cluster.keyspace.stream(
            SPLIT.topic("market.tick", "S5")
        )
        domains = await RuntimeServiceStub(on_cluster.channel).ListDomains(
            runtime_pb.ListDomainsRequest(), metadata=on_cluster.viewer
        )
        (counter,) = [d for d in domains.domains if d.name == "tick_counter"]
        assert list(counter.consumes) == ["market.tick"]
        assert {g.stream for g in counter.groups} == {
            on_cluster.keyspace.stream(t) for t in SPLIT.topics("market.tick")
        }
        assert sum(g.pending for g in counter.groups) == 0
    finally:
        await engine.close()


async def test_health_is_serving_on_the_cluster(on_cluster: Plane) -> None:
    health = health_pb2_grpc.HealthStub(on_cluster.channel)
    async with asyncio.timeout(10):
        while (await health.Check(health_pb2.HealthCheckRequest())).status != SERVING:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    system = await RuntimeServiceStub(on_cluster.channel).GetSystemHealth(
        runtime_pb.GetSystemHealthRequest(), metadata=on_cluster.viewer
    )
    components = {c.name: c for c in system.components}
    assert components["redis"].status != runtime_pb.HEALTH_STATUS_CRITICAL, components["redis"]
    assert components["policy"].status == runtime_pb.HEALTH_STATUS_HEALTHY


async def test_discarding_a_namespace_deletes_its_keys_on_every_master(
    cluster: RedisClusterHarness, on_cluster: Plane
) -> None:
    await on_cluster.bus.publish_envelopes(ticks(1))
    keyspace = on_cluster.keyspace
    masters = {
        cluster.port_of_slot(slot_of(keyspace.stream(t))) for t in SPLIT.topics("market.tick")
    }
    assert len(masters) == 3
    assert await delete_matching(on_cluster.redis, keyspace.pattern()) >= 3
    for topic in SPLIT.topics("market.tick"):
        assert await on_cluster.redis.exists(keyspace.stream(topic)) == 0


# -- partitioned reads on a single Redis --------------------------------------------------


async def test_read_events_covers_every_partition_of_a_type_on_a_single_redis(
    redis_server_url: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    namespace = new_namespace()
    p = await start_plane(redis_server_url, namespace, tmp_path, SPLIT)
    try:
        published = [*ticks(2), *tick_envelopes(2, symbol="S1")]
        await p.bus.publish_envelopes(published)
        events = [r.event for r in await read_events(p, "market.tick")]
        assert len(events) == len(published)
        assert {e.stream for e in events} == {
            f"{namespace}:stream:market.tick:{k}" for k in range(3)
        }
        ids = [e.entry_id for e in events]
        assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))  # oldest first
    finally:
        await stop_plane(p)
        await delete_matching(aredis, f"{namespace}:*")


# -- the run summary over partitions -------------------------------------------------------


async def test_the_run_summary_counts_every_partition_of_a_type_on_the_cluster(
    on_cluster: Plane,
) -> None:
    split = Partitioning({"risk.signal.rejected": 3, "market.tick": 3})
    keyspace = ClusterKeyspace.of(on_cluster.keyspace, split)
    bus = open_publisher(on_cluster.redis, keyspace, producer="test", partitioning=split)
    try:
        await bus.publish_envelopes(ticks(1))  # before the run: not counted
        reads = RedisOperatorStore(on_cluster.redis, keyspace)
        since = await report.stream_positions(reads, keyspace, split)
        tally = report.RejectionTally(reads, keyspace, since, split)
        rejections = [
            seal(
                SignalRejected(signal_id=f"s{n}", symbol=symbol, reason=reason),
                producer="risk_safety",
                partition_key=symbol,
            )
            for n, (symbol, reason) in enumerate(
                [(s, REJECT_REASON_SYMBOL_NOT_ALLOWED) for s in SYMBOLS]
                + [("S1", REJECT_REASON_CONFIDENCE_TOO_LOW)]
            )
        ]
        await bus.publish_envelopes([*rejections, *ticks(2)])
        assert (
            len({keyspace.stream(split.topic(r.event_type, r.partition_key)) for r in rejections})
            == 3
        )
        await tally.catch_up()
        summary = await report.summarize(reads, keyspace, since, tally, split)
        assert summary.events["market.tick"] == 2 * len(SYMBOLS)
        assert summary.events[report.REJECTED] == len(rejections)
        assert summary.rejections == {
            "REJECT_REASON_SYMBOL_NOT_ALLOWED": len(SYMBOLS),
            "REJECT_REASON_CONFIDENCE_TOO_LOW": 1,
        }
        assert summary.rejections_uncounted == 0
    finally:
        await bus.close()


# -- quantum control-plane, standing alone -----------------------------------------------


async def test_quantum_control_plane_serves_a_cluster_from_its_url(
    cluster: RedisClusterHarness, tmp_path: Path
) -> None:
    namespace, token, port = new_namespace(), secrets.token_urlsafe(24), free_port()
    command = [
        str(Path(sys.executable).parent / "quantum"),
        "control-plane",
        *("--redis-url", cluster.url, "--namespace", namespace),
        *("--stream-partitions", "market.tick=3"),
        *("--grpc-addr", f"127.0.0.1:{port}", "--metrics-addr", ""),
        *("--state-dir", str(tmp_path)),
    ]
    env = {**os.environ, "QUANTUM_TOKENS": f"vera:viewer:{token}"}
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL
    )
    redis = open_client(cluster.url, socket_connect_timeout=2.0)
    keyspace = keyspace_for(cluster.url, namespace, SPLIT)
    bus = open_publisher(redis, keyspace, producer="test", partitioning=SPLIT)
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        async with asyncio.timeout(30):
            while True:
                assert process.returncode is None, "quantum control-plane exited"
                with contextlib.suppress(aio.AioRpcError):
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == SERVING:
                        break
                await asyncio.sleep(0.1)
        published = ticks(2)
        await bus.publish_envelopes(published)
        request = pb.ReadEventsRequest(range=pb.EventRange(event_type="market.tick"))
        metadata = (("authorization", f"Bearer {token}"),)
        events = [
            r.event async for r in ReplayServiceStub(channel).ReadEvents(request, metadata=metadata)
        ]
        assert sorted(e.envelope.event_id for e in events) == sorted(p.event_id for p in published)
        assert len({e.stream for e in events}) == 3
    finally:
        await channel.close()
        await bus.close()
        await redis.aclose()
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                exit_code = await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
    assert exit_code == 0
