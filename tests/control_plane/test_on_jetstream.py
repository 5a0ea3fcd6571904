"""The control plane on NATS JetStream (a private nats-server of the test's own), its streams
split over partitions: the policy, reads of a partitioned type, a publishing replay, the live
feed, dead letters redriven and purged, state repairs, a trace committed by a runner, health
(and NATS lost and back), the run summary, and ``quantum control-plane`` given a nats:// URL."""

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
from google.protobuf.field_mask_pb2 import FieldMask
from grpc import StatusCode, aio
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
from runtime.adapters.nats.engine import JetStreamEngine, JetStreamPublisher
from runtime.adapters.nats.keys import JetStreamKeyspace
from runtime.core.delivery import DeliveryLoop, RunnerConfig
from runtime.core.envelope import seal
from runtime.core.keys import Keyspace
from runtime.core.operator_store import OperatorStore
from runtime.core.partitioning import Partitioning
from runtime.core.policy.ports import PolicyService
from runtime.core.redis_server import free_port
from runtime.engines import OperatorSide, engine_kind, open_operator_side
from tests.conformance.harness import new_namespace
from tests.conformance.harness_jetstream import JetStreamHarness
from tests.control_plane.support import wait_until
from tests.process.actors import TickCounter, tick

pytestmark = pytest.mark.slow

SPLIT = Partitioning({"market.tick": 3, "portfolio.pnl.updated": 3})
SYMBOLS = ("S0", "S1", "S2", "S3", "S5", "S7")  # crc32 mod 3: 0, 0, 2, 2, 2, 1
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def nats() -> Iterator[JetStreamHarness]:
    harness = JetStreamHarness()
    yield harness
    harness.stop()


@dataclass
class Plane:
    plane: ControlPlane
    engine: JetStreamEngine
    side: OperatorSide
    bus: JetStreamPublisher
    channel: aio.Channel
    viewer: tuple[tuple[str, str], ...]
    operator: tuple[tuple[str, str], ...]

    @property
    def keyspace(self) -> Keyspace:
        return self.engine.keyspace

    @property
    def store(self) -> OperatorStore:
        return self.side.store

    @property
    def policy(self) -> PolicyService:
        return self.side.policy

    def replay(self) -> ReplayServiceStub:
        return ReplayServiceStub(self.channel)


async def start_plane(url: str, state_dir: Path, partitioning: Partitioning = SPLIT) -> Plane:
    """A control plane as ``quantum control-plane`` builds one for a nats:// ``url``, in a
    namespace of its own: the engine's operator side, publishing through the engine."""
    engine = JetStreamEngine.from_url(url, Keyspace(new_namespace()), partitioning=partitioning)
    side = open_operator_side(url, engine, state_dir=state_dir)
    viewer, operator = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    tokens = TokenTable([("vera", Role.VIEWER, viewer), ("otto", Role.OPERATOR, operator)])
    await side.policy.start()
    bus = engine.publisher(producer="test")
    plane = ControlPlane(
        side.store,
        engine.keyspace,
        side.policy,
        config=ControlPlaneConfig(grpc_addr="127.0.0.1:0", metrics_addr=""),
        tokens=tokens,
        domain_factories={"tick_counter": TickCounter},
        publisher=bus,
        partitioning=partitioning,
    )
    port = await plane.start()
    return Plane(
        plane,
        engine,
        side,
        bus,
        aio.insecure_channel(f"127.0.0.1:{port}"),
        (("authorization", f"Bearer {viewer}"),),
        (("authorization", f"Bearer {operator}"),),
    )


async def stop_plane(p: Plane) -> None:
    async with asyncio.timeout(30):
        await p.channel.close()
        await p.plane.stop(grace=0)
        await p.bus.close()
        await p.policy.stop()
        await p.side.close()
        await p.engine.close()


@pytest.fixture
async def on_nats(nats: JetStreamHarness, tmp_path: Path) -> AsyncIterator[Plane]:
    async with asyncio.timeout(30):
        running = await start_plane(nats.url, tmp_path)
    yield running
    await stop_plane(running)


def ticks(per_symbol: int, first: int = 1) -> list[Envelope]:
    return [
        seal(tick(symbol, n), producer="market_data", partition_key=symbol)
        for n in range(first, first + per_symbol)
        for symbol in SYMBOLS
    ]


def subjects(p: Plane, event_type: str) -> set[str]:
    """The subjects of every partition of ``event_type``."""
    return {p.keyspace.stream(t) for t in SPLIT.topics(event_type)}


async def read_events(p: Plane, event_type: str) -> list[pb.ReadEventsResponse]:
    request = pb.ReadEventsRequest(range=pb.EventRange(event_type=event_type))
    return [r async for r in p.replay().ReadEvents(request, metadata=p.viewer)]


def tick_counter_config(partition: int = 0, partitions: int = 1) -> RunnerConfig:
    return RunnerConfig(
        consumer_name=f"test-{partition}",
        partition=partition,
        partitions=partitions,
        block_ms=50,
        lease_ttl_ms=1000,
    )


@contextlib.asynccontextmanager
async def tick_counters(
    p: Plane, partitions: int = 1, only: tuple[int, ...] | None = None
) -> AsyncIterator[list[DeliveryLoop]]:
    """Tick counters on the engine (partitions ``only`` of ``partitions``; all by default);
    stopped after."""
    publisher = p.engine.publisher(producer="runner")
    loops = [
        p.engine.runner(TickCounter(), tick_counter_config(n, partitions), publisher)
        for n in (only if only is not None else range(partitions))
    ]
    tasks = [asyncio.create_task(loop.run()) for loop in loops]
    try:
        yield loops
    finally:
        for loop in loops:
            await loop.stop()
        await asyncio.gather(*tasks)  # a runner that failed fails the test
        await publisher.close()


def counter(loop: DeliveryLoop) -> TickCounter:
    return cast(TickCounter, loop.actor)


async def handled(loops: list[DeliveryLoop], count: int) -> None:
    """Until the loops' actors handled ``count`` ticks between them."""
    await wait_until(lambda: sum(len(counter(loop).seen) for loop in loops) >= count, 30)


async def stored_counts(p: Plane, partition: int, partitions: int) -> dict[str, int]:
    data = await p.engine.load_state(TickCounter.name, partition, partitions)
    return {} if data is None else dict(json.loads(data)["counts"])


async def until_stored(p: Plane, partition: int, partitions: int, counts: dict[str, int]) -> None:
    """Until the partition's committed state counts ``counts``."""
    async with asyncio.timeout(20):
        while await stored_counts(p, partition, partitions) != counts:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


# -- the URL and the keys --------------------------------------------------------------------


def test_a_nats_url_gives_subjects_for_the_keys_of_every_partition(
    nats: JetStreamHarness,
) -> None:
    assert engine_kind(nats.url) == "jetstream"
    engine = JetStreamEngine.from_url(nats.url, Keyspace("q"), partitioning=SPLIT)
    keyspace = engine.keyspace
    assert isinstance(keyspace, JetStreamKeyspace)
    streams = [keyspace.stream(t) for t in SPLIT.topics("market.tick")]
    assert len(set(streams)) == 3
    assert {engine.names.stream_of(s) for s in streams} == {engine.names.events_stream}
    assert engine.names.stream_of(keyspace.dlq("tick_counter")) == engine.names.dlq_stream
    assert keyspace.audit() != keyspace.state_repairs()


# -- the policy ------------------------------------------------------------------------------


async def test_the_policy_is_read_switched_updated_and_watched_on_jetstream(
    on_nats: Plane,
) -> None:
    stub = PolicyServiceStub(on_nats.channel)
    before = (await stub.GetPolicy(policy_pb.GetPolicyRequest(), metadata=on_nats.viewer)).policy
    watch = stub.WatchPolicy(policy_pb.WatchPolicyRequest(), metadata=on_nats.viewer)
    assert (await asyncio.wait_for(watch.read(), 10)).policy.version == before.version
    switched = await stub.SwitchMode(
        policy_pb.SwitchModeRequest(
            mode=policy_pb2.RISK_MODE_DEFENSIVE,
            expected_version=before.version,
            reason="drill on nats",
        ),
        metadata=on_nats.operator,
    )
    assert switched.policy.mode == policy_pb2.RISK_MODE_DEFENSIVE
    assert switched.policy.updated_by == "operator:otto"
    updated = await stub.UpdatePolicy(
        policy_pb.UpdatePolicyRequest(
            policy=policy_pb2.Policy(normal=policy_pb2.ModeLimits(max_leverage="2.5")),
            update_mask=FieldMask(paths=["normal.max_leverage"]),
            expected_version=switched.policy.version,
            reason="tighten on nats",
        ),
        metadata=on_nats.operator,
    )
    assert updated.policy.version == before.version + 2
    seen = [(await asyncio.wait_for(watch.read(), 10)) for _ in range(2)]
    assert [m.change.version for m in seen] == [before.version + 1, before.version + 2]
    assert [list(m.change.changed_fields) for m in seen] == [["mode"], ["normal.max_leverage"]]
    watch.cancel()
    after = (await stub.GetPolicy(policy_pb.GetPolicyRequest(), metadata=on_nats.viewer)).policy
    assert (after.mode, after.normal.max_leverage) == (policy_pb2.RISK_MODE_DEFENSIVE, "2.5")
    history = await stub.ListPolicyHistory(
        policy_pb.ListPolicyHistoryRequest(page_size=2), metadata=on_nats.viewer
    )
    assert [c.reason for c in history.changes] == ["tighten on nats", "drill on nats"]
    assert {c.changed_by for c in history.changes} == {"operator:otto"}


async def test_a_viewer_cannot_change_the_policy_on_jetstream(on_nats: Plane) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await PolicyServiceStub(on_nats.channel).SwitchMode(
            policy_pb.SwitchModeRequest(mode=policy_pb2.RISK_MODE_DEFENSIVE, reason="no"),
            metadata=on_nats.viewer,
        )
    assert caught.value.code() == StatusCode.PERMISSION_DENIED
    assert on_nats.policy.get_policy().mode != policy_pb2.RISK_MODE_DEFENSIVE


# -- events ----------------------------------------------------------------------------------


async def test_read_events_covers_every_partition_of_a_type_on_jetstream(
    on_nats: Plane,
) -> None:
    published = ticks(3)
    await on_nats.bus.publish_envelopes(published)
    events = [r.event for r in await read_events(on_nats, "market.tick")]
    assert sorted(e.envelope.event_id for e in events) == sorted(e.event_id for e in published)
    assert {e.stream for e in events} == subjects(on_nats, "market.tick")
    for symbol in SYMBOLS:  # each key's events in their order
        mine = [e for e in events if e.envelope.partition_key == symbol]
        assert [int(json.loads(e.payload_json)["sequence"]) for e in mine] == [1, 2, 3]
    ids = [e.entry_id for e in events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))  # oldest first


async def test_read_events_between_entry_ids_and_up_to_a_limit_on_jetstream(
    on_nats: Plane,
) -> None:
    await on_nats.bus.publish_envelopes(ticks(2))
    every = [r.event.entry_id for r in await read_events(on_nats, "market.tick")]
    request = pb.ReadEventsRequest(
        range=pb.EventRange(event_type="market.tick", start_id=every[2], end_id=every[8])
    )
    between = [
        r.event.entry_id
        async for r in on_nats.replay().ReadEvents(request, metadata=on_nats.viewer)
    ]
    assert between == every[2:9]
    request = pb.ReadEventsRequest(range=pb.EventRange(event_type="market.tick", limit=4))
    limited = [
        r.event.entry_id
        async for r in on_nats.replay().ReadEvents(request, metadata=on_nats.viewer)
    ]
    assert limited == every[:4]


async def test_a_publishing_replay_on_jetstream_puts_outputs_on_their_partitions(
    on_nats: Plane,
) -> None:
    await on_nats.bus.publish_envelopes(ticks(2))
    request = pb.ReplayToDomainRequest(
        domain="tick_counter", range=pb.EventRange(event_type="market.tick"), publish=True
    )
    responses = [
        r async for r in on_nats.replay().ReplayToDomain(request, metadata=on_nats.operator)
    ]
    assert [r.processed for r in responses] == list(range(1, 2 * len(SYMBOLS) + 1))
    assert all(r.published and not r.error for r in responses)
    outputs = [r.event for r in await read_events(on_nats, "portfolio.pnl.updated")]
    assert len(outputs) == 2 * len(SYMBOLS)
    for event in outputs:  # each on the partition of its key
        topic = SPLIT.topic("portfolio.pnl.updated", event.envelope.partition_key)
        assert event.stream == on_nats.keyspace.stream(topic)
    assert {e.stream for e in outputs} == subjects(on_nats, "portfolio.pnl.updated")


async def test_the_live_feed_follows_every_partition_on_jetstream(on_nats: Plane) -> None:
    call = TraceServiceStub(on_nats.channel).SubscribeTraces(
        trace_pb.SubscribeTracesRequest(event_types=["market.tick"]), metadata=on_nats.viewer
    )
    await wait_until(lambda: on_nats.plane.live_feed.following)
    published = ticks(2)
    await on_nats.bus.publish_envelopes(published)
    received = [(await asyncio.wait_for(call.read(), 10)).event for _ in published]
    assert sorted(e.envelope.event_id for e in received) == sorted(e.event_id for e in published)
    assert {e.stream for e in received} == subjects(on_nats, "market.tick")
    call.cancel()


# -- dead letters ----------------------------------------------------------------------------


async def dead_letters_of_garbage(p: Plane, *topics: str) -> None:
    """Bytes that are no envelope on each of ``topics``, dead-lettered by a tick counter
    running on the engine."""
    await p.bus.jetstream_log.append([(topic, b"not an envelope") for topic in topics])
    async with tick_counters(p), asyncio.timeout(20):
        while len(await p.engine.dead_letters(TickCounter.name)) < len(topics):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_a_dead_letter_on_jetstream_is_listed_and_redriven_once(on_nats: Plane) -> None:
    await dead_letters_of_garbage(on_nats, "market.tick:1")
    listed = await on_nats.replay().ListDeadLetters(
        pb.ListDeadLettersRequest(domain="tick_counter"), metadata=on_nats.viewer
    )
    (letter,) = listed.dead_letters
    assert letter.original_stream == on_nats.keyspace.stream("market.tick:1")
    assert letter.original_payload == b"not an envelope"
    assert letter.reason == "undecodable"
    assert not letter.redriven_entry_id
    request = pb.RedriveDeadLettersRequest(domain="tick_counter")
    first = await on_nats.replay().RedriveDeadLetters(request, metadata=on_nats.operator)
    again = await on_nats.replay().RedriveDeadLetters(request, metadata=on_nats.operator)
    assert (first.redriven, again.redriven, again.already_redriven) == (1, 0, 1)
    copies = [e for e in await on_nats.engine.read("market.tick:1") if e[1] == b"not an envelope"]
    assert len(copies) == 2  # the original and one redrive
    listed = await on_nats.replay().ListDeadLetters(
        pb.ListDeadLettersRequest(domain="tick_counter"), metadata=on_nats.viewer
    )
    assert listed.dead_letters[0].redriven_entry_id == copies[1][0]


async def test_a_purge_on_jetstream_deletes_the_letters_and_is_audited(on_nats: Plane) -> None:
    await dead_letters_of_garbage(on_nats, "market.tick:0", "market.tick:2")
    letters = await on_nats.engine.dead_letters(TickCounter.name)
    assert len(letters) == 2
    response = await on_nats.replay().PurgeDeadLetters(
        pb.PurgeDeadLettersRequest(domain="tick_counter", all=True), metadata=on_nats.operator
    )
    assert sorted(response.entry_ids) == sorted(letter.entry_id for letter in letters)
    assert await on_nats.engine.dead_letters(TickCounter.name) == []
    listed = await on_nats.replay().ListDeadLetters(
        pb.ListDeadLettersRequest(domain="tick_counter"), metadata=on_nats.viewer
    )
    assert list(listed.dead_letters) == []
    ((_, audit),) = await on_nats.store.range(on_nats.keyspace.audit())
    assert audit[b"action"] == b"dead_letters.purge"
    assert audit[b"by"] == b"operator:otto"
    assert audit[b"count"] == b"2"


# -- state repairs ---------------------------------------------------------------------------


async def test_a_rebuild_on_jetstream_replaces_a_partition_state_and_bumps_its_epoch(
    on_nats: Plane,
) -> None:
    await on_nats.bus.publish_envelopes(ticks(2))
    async with tick_counters(on_nats, partitions=3) as loops:
        await handled(loops, len(SYMBOLS) * 2)
        await until_stored(on_nats, 2, 3, {"S2": 2, "S3": 2, "S5": 2})  # crc32 mod 3 == 2
    response = await on_nats.replay().RepairDomainState(
        pb.RepairDomainStateRequest(
            domain="tick_counter",
            mode=pb.REPAIR_MODE_REBUILD,
            partition=2,
            partitions=3,
            reason="rebuild on nats",
        ),
        metadata=on_nats.operator,
    )
    assert response.stored
    assert response.repair.state_key == on_nats.store.state_name(TickCounter.name, 2, 3)
    assert (response.repair.inputs_replayed, response.repair.state_epoch) == (6, 1)
    assert await on_nats.store.state_epoch(TickCounter.name, 2, 3) == 1
    assert await on_nats.store.state_epoch(TickCounter.name, 1, 3) == 0
    assert await stored_counts(on_nats, 2, 3) == {"S2": 2, "S3": 2, "S5": 2}
    history = await on_nats.replay().ListStateRepairs(
        pb.ListStateRepairsRequest(domain="tick_counter"), metadata=on_nats.viewer
    )
    assert [(r.reason, r.state_epoch, r.changed_by) for r in history.repairs] == [
        ("rebuild on nats", 1, "operator:otto")
    ]


async def test_a_reset_on_jetstream_is_what_a_running_partition_carries_on_from(
    on_nats: Plane,
) -> None:
    await on_nats.bus.publish_envelopes(ticks(2))
    async with tick_counters(on_nats, partitions=3, only=(2,)) as (loop,):
        await handled([loop], 6)
        await until_stored(on_nats, 2, 3, {"S2": 2, "S3": 2, "S5": 2})
        response = await on_nats.replay().RepairDomainState(
            pb.RepairDomainStateRequest(
                domain="tick_counter",
                mode=pb.REPAIR_MODE_RESET,
                partition=2,
                partitions=3,
                reason="start over on nats",
            ),
            metadata=on_nats.operator,
        )
        assert (response.stored, response.repair.state_epoch) == (True, 1)
        assert await stored_counts(on_nats, 2, 3) == {}
        await on_nats.bus.publish_envelopes(ticks(1, first=3))
        await wait_until(lambda: counter(loop).counts == {"S2": 1, "S3": 1, "S5": 1}, 20)
        await until_stored(on_nats, 2, 3, {"S2": 1, "S3": 1, "S5": 1})
    history = await on_nats.replay().ListStateRepairs(
        pb.ListStateRepairsRequest(domain="tick_counter"), metadata=on_nats.viewer
    )
    assert [(r.mode, r.state_epoch) for r in history.repairs] == [(pb.REPAIR_MODE_RESET, 1)]


# -- traces and domains ----------------------------------------------------------------------


async def test_get_trace_and_list_domains_show_a_runner_on_jetstream(on_nats: Plane) -> None:
    root = seal(tick("S5", 1), producer="market_data", partition_key="S5")
    await on_nats.bus.publish_envelopes([root])
    async with tick_counters(on_nats) as loops:
        await handled(loops, 1)
        domains = await RuntimeServiceStub(on_nats.channel).ListDomains(
            runtime_pb.ListDomainsRequest(), metadata=on_nats.viewer
        )
    response = await TraceServiceStub(on_nats.channel).GetTrace(
        trace_pb.GetTraceRequest(trace_id=root.trace_id), metadata=on_nats.viewer
    )
    types = [e.envelope.event_type for e in response.events]
    assert types == ["market.tick", "portfolio.pnl.updated"]
    assert response.events[1].envelope.causation_id == root.event_id
    assert response.events[0].stream == on_nats.keyspace.stream(SPLIT.topic("market.tick", "S5"))
    assert response.events[1].stream == on_nats.keyspace.stream(
        SPLIT.topic("portfolio.pnl.updated", "S5")
    )
    (counted,) = [d for d in domains.domains if d.name == "tick_counter"]
    assert list(counted.consumes) == ["market.tick"]
    assert {g.stream for g in counted.groups} == subjects(on_nats, "market.tick")
    assert sum(g.pending for g in counted.groups) == 0


# -- health ----------------------------------------------------------------------------------


async def test_health_is_serving_and_nats_healthy_on_jetstream(on_nats: Plane) -> None:
    health = health_pb2_grpc.HealthStub(on_nats.channel)
    async with asyncio.timeout(10):
        while (await health.Check(health_pb2.HealthCheckRequest())).status != SERVING:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    system = await RuntimeServiceStub(on_nats.channel).GetSystemHealth(
        runtime_pb.GetSystemHealthRequest(), metadata=on_nats.viewer
    )
    components = {c.name: c for c in system.components}
    assert "redis" not in components
    assert components["nats"].status == runtime_pb.HEALTH_STATUS_HEALTHY, components["nats"]
    assert float(components["nats"].figures["latency_ms"]) >= 0
    assert components["policy"].status == runtime_pb.HEALTH_STATUS_HEALTHY


async def test_health_follows_nats_down_and_back(tmp_path: Path) -> None:
    private = JetStreamHarness()  # its own server: the module's stays up for the others
    p: Plane | None = None
    try:
        p = await start_plane(private.url, tmp_path)
        watch = health_pb2_grpc.HealthStub(p.channel).Watch(health_pb2.HealthCheckRequest())
        assert (await asyncio.wait_for(watch.read(), 10)).status == SERVING
        private.kill()
        assert (await asyncio.wait_for(watch.read(), 15)).status == NOT_SERVING
        system = await RuntimeServiceStub(p.channel).GetSystemHealth(
            runtime_pb.GetSystemHealthRequest(), metadata=p.viewer
        )  # the first call: nothing cached
        nats_health = {c.name: c for c in system.components}["nats"]
        assert nats_health.status == runtime_pb.HEALTH_STATUS_CRITICAL, nats_health
        private.restart()
        assert (await asyncio.wait_for(watch.read(), 20)).status == SERVING
        watch.cancel()
        async with asyncio.timeout(15):  # once the cached report (5 s) is old
            while nats_health.status != runtime_pb.HEALTH_STATUS_HEALTHY:
                await asyncio.sleep(0.2)
                system = await RuntimeServiceStub(p.channel).GetSystemHealth(
                    runtime_pb.GetSystemHealthRequest(), metadata=p.viewer
                )
                nats_health = {c.name: c for c in system.components}["nats"]
    finally:
        if p is not None:
            await stop_plane(p)
        private.stop()


# -- the run summary over partitions ---------------------------------------------------------


async def test_the_run_summary_counts_every_partition_of_a_type_on_jetstream(
    nats: JetStreamHarness,
) -> None:
    split = Partitioning({"risk.signal.rejected": 3, "market.tick": 3})
    engine = JetStreamEngine.from_url(nats.url, Keyspace(new_namespace()), partitioning=split)
    bus = engine.publisher(producer="test")
    try:
        await bus.publish_envelopes(ticks(1))  # before the run: not counted
        store, keyspace = engine.operator_store(), engine.keyspace
        since = await report.stream_positions(store, keyspace, split)
        tally = report.RejectionTally(store, keyspace, since, split)
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
        await bus.publish_envelopes([*rejections, *ticks(2, first=2)])
        homes = {keyspace.stream(split.topic(r.event_type, r.partition_key)) for r in rejections}
        assert len(homes) == 3
        await tally.catch_up()
        summary = await report.summarize(store, keyspace, since, tally, split)
        assert summary.events["market.tick"] == 2 * len(SYMBOLS)
        assert summary.events[report.REJECTED] == len(rejections)
        assert summary.rejections == {
            "REJECT_REASON_SYMBOL_NOT_ALLOWED": len(SYMBOLS),
            "REJECT_REASON_CONFIDENCE_TOO_LOW": 1,
        }
        assert summary.rejections_uncounted == 0
    finally:
        await bus.close()
        await engine.close()


# -- quantum control-plane, standing alone ---------------------------------------------------


async def test_quantum_control_plane_serves_jetstream_from_its_url(
    nats: JetStreamHarness, tmp_path: Path
) -> None:
    namespace, token, port = new_namespace(), secrets.token_urlsafe(24), free_port()
    command = [
        str(Path(sys.executable).parent / "quantum"),
        "control-plane",
        *("--redis-url", nats.url, "--namespace", namespace),
        *("--stream-partitions", "market.tick=3"),
        *("--grpc-addr", f"127.0.0.1:{port}", "--metrics-addr", ""),
        *("--state-dir", str(tmp_path)),
    ]
    env = {**os.environ, "QUANTUM_TOKENS": f"vera:viewer:{token}"}
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL
    )
    engine = JetStreamEngine.from_url(nats.url, Keyspace(namespace), partitioning=SPLIT)
    bus = engine.publisher(producer="test")
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    metadata = (("authorization", f"Bearer {token}"),)
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
        policy = await PolicyServiceStub(channel).GetPolicy(
            policy_pb.GetPolicyRequest(), metadata=metadata
        )
        assert policy.policy.version >= 1
        published = ticks(2)
        await bus.publish_envelopes(published)
        request = pb.ReadEventsRequest(range=pb.EventRange(event_type="market.tick"))
        events = [
            r.event async for r in ReplayServiceStub(channel).ReadEvents(request, metadata=metadata)
        ]
        assert sorted(e.envelope.event_id for e in events) == sorted(p.event_id for p in published)
        assert {e.stream for e in events} == {
            engine.keyspace.stream(t) for t in SPLIT.topics("market.tick")
        }
    finally:
        await channel.close()
        await bus.close()
        await engine.close()
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                exit_code = await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
    assert exit_code == 0
