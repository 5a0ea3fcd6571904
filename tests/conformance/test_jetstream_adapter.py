"""What the JetStream engine does its own way (the shared guarantees are in
``test_guarantees.py``): message-id dedupe, a subject per topic, the fenced partition record,
attempt counts kept in that record, and a broker that dies under a running pipeline."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator, Iterator

import pytest
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.adapters.nats.engine import JetStreamEngine
from runtime.adapters.nats.retention import RetentionPolicy
from runtime.core.envelope import seal
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from runtime.core.partitioning import Partitioning
from runtime.core.transport import Backpressure, Commit, LeaseLost
from tests.conformance.harness_jetstream import JetStreamHarness
from tests.conformance.test_guarantees import (
    OUTPUTS,
    SYMBOLS,
    fast,
    outputs,
    publish_ticks,
    running,
    stored_state,
    wait_until,
)
from tests.process.actors import FlakyTicks, TickCounter, tick


@pytest.fixture(scope="module")
def nats_server() -> Iterator[JetStreamHarness]:
    started = JetStreamHarness()
    yield started
    started.stop()


def open_engine(
    server: JetStreamHarness, namespace: str, partitioning: Partitioning | None = None
) -> JetStreamEngine:
    engine = server.open(namespace, partitioning)
    assert isinstance(engine, JetStreamEngine)
    return engine


@pytest.fixture
async def engine(nats_server: JetStreamHarness, namespace: str) -> AsyncIterator[JetStreamEngine]:
    opened = open_engine(nats_server, namespace)
    yield opened
    await opened.close()


async def test_a_publish_retried_with_the_same_event_id_is_stored_once(
    engine: JetStreamEngine,
) -> None:
    publisher = engine.publisher(metrics=RuntimeMetrics())
    envelope = seal(tick("BTC", 1), producer="market_data", partition_key="BTC")
    first = await publisher.publish_envelope(envelope)
    again = await publisher.publish_envelope(envelope)  # a retry after a lost reply
    other = await publisher.publish(tick("BTC", 2), partition_key="BTC")
    await publisher.close()

    stored = await engine.read("market.tick")
    assert [Envelope.FromString(data).event_id for _, data in stored] == [
        envelope.event_id,
        other.event_id,
    ]
    # The retry was answered with the original's sequence: the same entry.
    assert first.rpartition("-")[2] == again.rpartition("-")[2]
    assert next(entry for entry, _ in stored).rpartition("-")[2] == first.rpartition("-")[2]


async def test_each_partition_of_a_type_is_a_subject_of_its_own(
    nats_server: JetStreamHarness, namespace: str
) -> None:
    engine = open_engine(nats_server, namespace, Partitioning({"market.tick": 4}))
    publisher = engine.publisher(metrics=RuntimeMetrics())
    await publish_ticks(publisher, 3)
    await publisher.close()

    js = await engine.connection.jetstream()
    info = await js.stream_info(engine.names.events_stream, subjects_filter=">")
    counts = info.state.subjects or {}
    expected: dict[str, int] = {}
    for symbol in SYMBOLS:
        subject = engine.names.subject(f"market.tick:{zlib.crc32(symbol.encode()) % 4}")
        expected[subject] = expected.get(subject, 0) + 3
    assert counts == expected
    assert all(subject.startswith(f"{namespace}.ev.market_2etick_3a") for subject in counts)
    await engine.close()


async def test_a_stale_owner_is_fenced_by_the_record_and_its_outputs_are_deduped(
    engine: JetStreamEngine,
) -> None:
    publisher = engine.publisher(metrics=RuntimeMetrics())
    old = engine.runner(TickCounter(), fast(), publisher).committer
    new = engine.runner(TickCounter(), fast(consumer_name="c2"), publisher).committer
    stale = await old.acquire("old/1", 150)
    assert stale is not None
    await asyncio.sleep(0.2)
    current = await new.acquire("new/1", 10_000)
    assert current is not None
    assert current.token > stale.token
    output = seal(tick("BTC", 1), producer="market_data", partition_key="BTC")

    # The stale owner still believes it owns the partition: its lease object is unchanged.
    with pytest.raises(LeaseLost):
        await old.commit(Commit(outputs=[output], state=b'{"stale": true}', lease=stale))
    # Its outputs went out before the fenced write (step 1); the new owner's redo of the
    # same work stores them once.
    await new.commit(Commit(outputs=[output], state=b'{"fresh": true}', lease=current))
    assert await engine.load_state(TickCounter.name) == b'{"fresh": true}'
    assert len(await engine.read("market.tick")) == 1
    # And it stays fenced: a second try, with a fresh read of the record, fails too.
    with pytest.raises(LeaseLost):
        await old.commit(Commit(state=b'{"stale": 2}', lease=stale))
    assert await engine.load_state(TickCounter.name) == b'{"fresh": true}'
    await publisher.close()


async def test_attempt_counts_survive_a_broker_restart_in_the_middle_of_retries(
    nats_server: JetStreamHarness, namespace: str
) -> None:
    engine = open_engine(nats_server, namespace)
    publisher = engine.publisher(metrics=RuntimeMetrics())
    await publisher.publish(tick("BTC", 1), partition_key="BTC")
    await publisher.publish(tick("BTC", 2), partition_key="BTC")
    actor = FlakyTicks(fail_times={1: 100})
    config = fast(max_deliveries=4, retry_base_ms=300, retry_cap_ms=300)
    async with running(engine.runner(actor, config, publisher)):
        await wait_until(lambda: actor.calls.get(1) == 1)
        nats_server.kill()
        await asyncio.sleep(0.5)
        nats_server.restart()
        await wait_until(lambda: 2 in actor.handled, within_s=30)
    await publisher.close()

    (letter,) = await engine.dead_letters(actor.name)
    assert letter.attempts == 4
    assert actor.calls[1] == 4  # no attempt forgotten, none made twice
    assert actor.handled == [2]
    await engine.close()


async def test_a_domain_runs_end_to_end_and_stores_its_state_and_outputs(
    engine: JetStreamEngine,
) -> None:
    publisher = engine.publisher(producer="market_data", metrics=RuntimeMetrics())
    actor = TickCounter()
    runner = engine.runner(actor, fast(), publisher)
    async with running(runner):
        await publish_ticks(publisher, 20)
        await wait_until(lambda: sum(actor.counts.values()) == 160)
        # The commits acknowledged what they handled: the group has nothing left.
        for _ in range(100):
            positions = await runner.subscription.positions()
            if [(p.pending, p.lag) for p in positions] == [(0, 0)]:
                break
            await asyncio.sleep(0.02)
        assert [(p.pending, p.lag) for p in positions] == [(0, 0)]
    await publisher.close()

    produced = await outputs(engine)
    assert len(produced) == 160
    assert {e.event_type for e in produced} == {OUTPUTS}
    assert len({e.causation_id for e in produced}) == 160
    state = await stored_state(engine, actor.name)
    assert state["counts"] == dict.fromkeys(SYMBOLS, 20)
    assert state["ooo"] == 0


async def test_a_broker_killed_twice_mid_flow_loses_nothing_and_doubles_nothing(
    nats_server: JetStreamHarness, namespace: str
) -> None:
    engine = open_engine(nats_server, namespace, Partitioning({"market.tick": 4}))
    publisher = engine.publisher(producer="market_data", metrics=RuntimeMetrics())
    actor = TickCounter()
    async with running(engine.runner(actor, fast(batch_size=16), publisher)):
        producer = asyncio.create_task(publish_ticks(publisher, 40))
        # Killed at two points of the flow, each time with entries in flight both ways.
        for handled in (40, 160):
            await wait_until(lambda: sum(actor.counts.values()) >= handled, within_s=30)  # noqa: B023
            nats_server.kill()
            await asyncio.sleep(0.3)
            nats_server.restart()
            await asyncio.sleep(0.3)
        await asyncio.wait_for(producer, 60)
        await wait_until(lambda: sum(actor.counts.values()) >= 320, within_s=60)
        await asyncio.sleep(0.3)
    await publisher.close()

    assert actor.counts == dict.fromkeys(SYMBOLS, 40)
    assert actor.out_of_order == 0
    produced = await outputs(engine)
    assert len(produced) == 320  # redone commits were deduped by message id
    assert len({e.causation_id for e in produced}) == 320
    state = await stored_state(engine, actor.name)
    assert state["counts"] == dict.fromkeys(SYMBOLS, 40)
    await engine.close()


async def test_an_owner_whose_lease_was_taken_stops_and_leaves_the_successor_its_entries(
    engine: JetStreamEngine,
) -> None:
    publisher = engine.publisher(metrics=RuntimeMetrics())
    first, second = TickCounter(), TickCounter()
    first_runner = engine.runner(first, fast(consumer_name="a", lease_ttl_ms=3_000), publisher)
    second_runner = engine.runner(second, fast(consumer_name="b"), publisher)
    async with running(first_runner):
        await publish_ticks(publisher, 3)
        await wait_until(lambda: sum(first.counts.values()) == 24)
        # The first owner is alive but its lease is declared expired (as if it had paused
        # past its TTL): the second takes the partition over while the first still pulls.
        kv = await engine.connection.kv()
        key = engine.names.lease_key(TickCounter.name)
        entry = await kv.get(key)
        lease = json.loads(entry.value or b"{}")
        await kv.update(key, json.dumps({**lease, "expires_ms": 0}).encode(), last=entry.revision)
        async with running(second_runner):
            await publish_ticks(publisher, 3, first=4)
            await wait_until(lambda: sum(second.counts.values()) == 48)
    await publisher.close()

    # The first owner found itself fenced (its consumer gone, its record write refused) and
    # stood by; whatever it handled after the takeover was void, and the outputs it had sent
    # before its refused write were the very ones its successor made again (same ids).
    assert second.counts == dict.fromkeys(SYMBOLS, 6)
    assert second.out_of_order == 0
    state = await stored_state(engine, TickCounter.name)
    assert state["counts"] == dict.fromkeys(SYMBOLS, 6)
    assert state["ooo"] == 0
    produced = await outputs(engine)
    assert len(produced) == 48
    assert len({e.causation_id for e in produced}) == 48


async def test_a_trace_is_found_with_one_read_of_the_trace_index(engine: JetStreamEngine) -> None:
    publisher = engine.publisher(producer="market_data", metrics=RuntimeMetrics())
    actor = TickCounter()
    async with running(engine.runner(actor, fast(), publisher)):
        root = await publisher.publish(tick("BTC", 1), partition_key="BTC")
        await publisher.publish(tick("ETH", 1), partition_key="ETH")
        await wait_until(lambda: sum(actor.counts.values()) == 2)
    await publisher.close()

    # Ordered by event id (an output's id keeps its cause's time, so within one
    # millisecond the two may sort either way): the root and its effect, each once.
    chain = {e.event_type: e for e in await engine.trace(root.trace_id)}
    assert set(chain) == {"market.tick", OUTPUTS}
    assert chain["market.tick"].event_id == root.event_id
    assert chain[OUTPUTS].causation_id == root.event_id
    assert await engine.trace("0" * 31 + "1") == []


async def test_a_subject_keeps_its_history_and_every_unread_entry_and_no_more(
    nats_server: JetStreamHarness, namespace: str
) -> None:
    # At most retain + ceiling + overshoot = 24 entries per subject; appends wait at 10 unread.
    retention = RetentionPolicy(retain=4, ceiling=10, overshoot=10, refresh_s=0.01)
    engine = JetStreamEngine.from_url(nats_server.url, Keyspace(namespace), retention=retention)
    publisher = engine.publisher(metrics=RuntimeMetrics())
    first = TickCounter()
    runner = engine.runner(first, fast(), publisher)
    await runner.subscription.open()  # the group exists: from here on its entries are kept
    async with running(runner):
        for seq in range(1, 6):
            await publish_ticks(publisher, 1, first=seq)
            await wait_until(lambda: sum(first.counts.values()) == 8 * seq)  # noqa: B023
    assert len(await engine.read("market.tick")) == 24  # the oldest read ones went
    # The group stopped reading: two more ticks per symbol stay unread.
    for seq in (6, 7):
        await asyncio.sleep(0.02)
        await publish_ticks(publisher, 1, first=seq)
    stored = [Envelope.FromString(data) for _, data in await engine.read("market.tick")]
    assert len(stored) == 24
    assert len([e for e in stored if e.event_id not in set(first.seen)]) == 16  # all of them

    second = TickCounter()
    async with running(engine.runner(second, fast(), publisher)):
        await wait_until(lambda: sum(second.counts.values()) == 56)
    await publisher.close()
    assert second.counts == dict.fromkeys(SYMBOLS, 7)
    assert second.out_of_order == 0
    assert len(second.seen) == 16
    await engine.close()


async def test_a_subject_its_consumer_is_far_behind_on_holds_publishers_back_then_fails(
    nats_server: JetStreamHarness, namespace: str
) -> None:
    retention = RetentionPolicy(ceiling=10, refresh_s=0.01, backpressure_timeout_s=0.5)
    engine = JetStreamEngine.from_url(nats_server.url, Keyspace(namespace), retention=retention)
    publisher = engine.publisher(metrics=RuntimeMetrics())
    actor = TickCounter()
    async with running(engine.runner(actor, fast(), publisher)):
        await publish_ticks(publisher, 1)
        await wait_until(lambda: sum(actor.counts.values()) == 8)
    await publish_ticks(publisher, 2, first=2)  # 16 unread: past the ceiling from here on
    await asyncio.sleep(0.05)
    started = asyncio.get_running_loop().time()
    with pytest.raises(Backpressure, match="group tick_counter"):
        await publisher.publish(tick("S0", 4), partition_key="S0")
    assert asyncio.get_running_loop().time() - started >= 0.4  # it waited before failing
    await publisher.close()
    stored = await engine.read("market.tick")
    assert len(stored) == 24  # nothing dropped to make room
    await engine.close()


async def test_an_entry_retried_in_place_is_not_skipped_after_a_restart_for_one_past_it(
    nats_server: JetStreamHarness, namespace: str
) -> None:
    # Tick 1 fails once; right after it an entry that cannot be opened, dead-lettered (and
    # acknowledged) when the batch is prepared, before tick 1's retry. The runner stops in
    # the retry's backoff: its next owner must still handle tick 1.
    first_engine = open_engine(nats_server, namespace)
    publisher = first_engine.publisher(metrics=RuntimeMetrics())
    await publisher.publish(tick("BTC", 1), partition_key="BTC")
    await publisher.log.append([("market.tick", b"\xff not an envelope")])
    await publisher.publish(tick("BTC", 2), partition_key="BTC")
    first = FlakyTicks(fail_times={1: 1})
    slow = fast(retry_base_ms=400, retry_cap_ms=400)
    async with running(first_engine.runner(first, slow, publisher)):
        await wait_until(lambda: first.calls.get(1) == 1)
        await asyncio.sleep(0.1)  # the commit before the retry is made
    await publisher.close()
    await first_engine.close()
    assert first.handled == []

    engine = open_engine(nats_server, namespace)
    publisher = engine.publisher(metrics=RuntimeMetrics())
    second = FlakyTicks()
    async with running(engine.runner(second, fast(), publisher)):
        await wait_until(lambda: second.handled == [1, 2])
    await publisher.close()
    (letter,) = await engine.dead_letters(second.name)
    assert letter.reason == "undecodable"
    await engine.close()
