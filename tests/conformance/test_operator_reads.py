"""The reads of ``OperatorStore`` (``runtime.core.operator_store``), held to the same
behaviour on every engine: the Redis one is the reference, JetStream's answers the same
questions on subjects (``runtime.adapters.nats.operator_reads``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from quantum.events.v1.envelope_pb2 import Envelope
from quantum.events.v1.market_pb2 import MarketTick
from quantum.events.v1.portfolio_pb2 import PnlUpdated

from runtime.core.actor import Actor, HandlerContext, handles
from runtime.core.engine import Engine
from runtime.core.metrics import RuntimeMetrics
from runtime.core.operator_store import GroupFigures, OperatorStore
from runtime.core.publisher import Publisher
from tests.conformance.harness import Harness
from tests.conformance.test_guarantees import fast, running, wait_until
from tests.process.actors import TickCounter, tick

TICKS = "market.tick"
QUIET = "portfolio.pnl.updated"  # nothing is published there in these tests but outputs


def order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def sequences(entries: list[tuple[str, dict[bytes, bytes]]]) -> list[int]:
    out = []
    for _, fields in entries:
        envelope = Envelope.FromString(fields[b"envelope"])
        out.append(MarketTick.FromString(envelope.payload).sequence)
    return out


@pytest.fixture
async def publisher(engine: Engine) -> AsyncIterator[Publisher]:
    opened = engine.publisher(producer="market_data", metrics=RuntimeMetrics())
    yield opened
    await opened.close()


async def publish(publisher: Publisher, first: int, last: int) -> list[Envelope]:
    return [
        await publisher.publish(tick("BTC", seq), partition_key="BTC")
        for seq in range(first, last + 1)
    ]


async def five_ticks(engine: Engine, publisher: Publisher) -> tuple[OperatorStore, str, list[str]]:
    await publish(publisher, 1, 5)
    store = engine.operator_store()
    key = engine.keyspace.stream(TICKS)
    ids = [entry for entry, _ in await store.range(key)]
    assert len(ids) == 5
    return store, key, ids


async def test_range_reads_bounds_inclusive_exclusive_and_by_count(
    engine: Engine, publisher: Publisher
) -> None:
    store, key, ids = await five_ticks(engine, publisher)
    whole = await store.range(key)
    assert sequences(whole) == [1, 2, 3, 4, 5]
    assert sorted(ids, key=order) == ids
    assert len(set(ids)) == 5
    assert sequences(await store.range(key, ids[1], ids[3])) == [2, 3, 4]
    assert sequences(await store.range(key, "(" + ids[1], "(" + ids[3])) == [3]
    assert sequences(await store.range(key, "(" + ids[1], "+")) == [3, 4, 5]
    assert sequences(await store.range(key, count=2)) == [1, 2]
    assert sequences(await store.range(key, ids[3], "+", count=10)) == [4, 5]
    # An id of a time only: "<ms>" starts at "<ms>-0" and ends at "<ms>-<max>".
    first_ms, last_ms = order(ids[0])[0], order(ids[-1])[0]
    assert sequences(await store.range(key, str(first_ms), str(last_ms))) == [1, 2, 3, 4, 5]
    assert await store.range(key, "-", str(first_ms - 1)) == []
    assert await store.range(key, str(last_ms + 1), "+") == []
    assert await store.range(engine.keyspace.stream(QUIET)) == []
    assert await store.range(key, ids[3], ids[1]) == []


async def test_range_reverse_newest_first_within_bounds(
    engine: Engine, publisher: Publisher
) -> None:
    store, key, ids = await five_ticks(engine, publisher)
    assert sequences(await store.range_reverse(key)) == [5, 4, 3, 2, 1]
    assert sequences(await store.range_reverse(key, count=2)) == [5, 4]
    assert sequences(await store.range_reverse(key, count=1)) == [5]
    assert sequences(await store.range_reverse(key, ids[3], ids[1])) == [4, 3, 2]
    assert sequences(await store.range_reverse(key, "(" + ids[3], "(" + ids[0])) == [3, 2]
    assert sequences(await store.range_reverse(key, ids[3], "-", count=1)) == [4]
    assert sequences(await store.range_reverse(key, "+", ids[2], count=10)) == [5, 4, 3]
    assert sequences(await store.range_reverse(key, "+", "(" + ids[4], count=1)) == []
    assert [e for e, _ in await store.range_reverse(key)] == ids[::-1]
    assert await store.range_reverse(engine.keyspace.stream(QUIET), count=3) == []


async def test_reads_from_the_end_skip_other_logs_entries(
    engine: Engine, publisher: Publisher
) -> None:
    store, key, ids = await five_ticks(engine, publisher)
    quiet = engine.keyspace.stream(QUIET)
    # Many entries of another log after this one's (on JetStream: the same stream).
    await publisher.publish_many(
        [PnlUpdated(symbol="ETH", realized_pnl=str(n)) for n in range(300)]
    )
    assert sequences(await store.range_reverse(key, count=2)) == [5, 4]
    assert sequences(await store.range_reverse(key, ids[1], count=1)) == [2]
    assert sequences(await store.range_reverse(key, "+", ids[3], count=5)) == [5, 4]
    assert sequences(await store.range(key, "(" + ids[3])) == [5]
    assert await store.read_after({key: ids[-1]}, 10, None) == []
    assert len(await store.range_reverse(quiet, count=250)) == 250
    assert await store.last_entry_ids([key]) == {key: ids[-1]}


async def test_newest_and_last_ids_of_a_log_and_of_a_missing_one(
    engine: Engine, publisher: Publisher
) -> None:
    store, key, ids = await five_ticks(engine, publisher)
    quiet = engine.keyspace.stream(QUIET)
    newest = await store.newest(key)
    assert newest is not None
    assert newest[0] == ids[-1]
    assert sequences([newest]) == [5]
    assert await store.newest(quiet) is None
    assert await store.last_entry_ids([key, quiet]) == {key: ids[-1], quiet: "0-0"}
    assert await store.last_entry_ids([]) == {}


async def test_entries_by_id_finds_each_named_entry_and_none_for_others(
    engine: Engine, publisher: Publisher
) -> None:
    store, key, ids = await five_ticks(engine, publisher)
    last_seq = order(ids[-1])[1]
    missing = f"{order(ids[-1])[0]}-{last_seq + 1000}"
    found = await store.entries_by_id(key, [ids[2], missing, ids[0]])
    assert found[1] is None
    assert sequences([("", f) for f in found if f is not None]) == [3, 1]
    # The same ids name nothing in another log.
    assert await store.entries_by_id(engine.keyspace.stream(QUIET), [ids[0]]) == [None]
    assert await store.entries_by_id(key, []) == []


async def test_read_after_returns_only_newer_entries_and_waits_for_them(
    engine: Engine, publisher: Publisher
) -> None:
    store, key, ids = await five_ticks(engine, publisher)
    quiet = engine.keyspace.stream(QUIET)
    ((stream, entries),) = await store.read_after({key: ids[2], quiet: "0-0"}, 10, None)
    assert stream == key
    assert sequences(entries) == [4, 5]
    assert [e for e, _ in entries] == ids[3:]
    assert await store.read_after({key: ids[2]}, 1, None) == [(key, entries[:1])]

    started = time.monotonic()
    assert await store.read_after({key: ids[-1], quiet: "0-0"}, 10, 300) == []
    assert time.monotonic() - started >= 0.25  # it waited for new entries, in vain

    waiting = asyncio.create_task(store.read_after({key: ids[-1], quiet: "0-0"}, 10, 5_000))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    started = time.monotonic()
    await publish(publisher, 6, 6)
    ((stream, entries),) = await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - started < 4.0  # it answered once something came, not at 5 s
    assert stream == key
    assert sequences(entries) == [6]
    assert order(entries[0][0]) > order(ids[-1])


async def test_read_after_reads_several_logs_at_once(engine: Engine, publisher: Publisher) -> None:
    store = engine.operator_store()
    ticks, quiet = engine.keyspace.stream(TICKS), engine.keyspace.stream(QUIET)
    await publisher.publish(PnlUpdated(symbol="ETH", realized_pnl="1"))
    await publish(publisher, 1, 2)
    found = await store.read_after({ticks: "0-0", quiet: "0-0"}, 10, None)
    # In which order the logs come is the engine's (one Redis: as asked; others: by time).
    assert {stream: len(entries) for stream, entries in found} == {quiet: 1, ticks: 2}


async def test_stream_counters_give_the_last_id_and_the_entries_added(
    engine: Engine, publisher: Publisher
) -> None:
    store, key, ids = await five_ticks(engine, publisher)
    assert await store.stream_counters(key) == (ids[-1], 5)
    assert await store.stream_counters(engine.keyspace.stream(QUIET)) is None


async def test_appended_since_counts_what_came_after_a_position_when_the_log_is_trimmed(
    harness: Harness, namespace: str
) -> None:
    engine = harness.open(namespace, keep=5)  # each log keeps about 5 entries
    publisher = engine.publisher(producer="market_data", metrics=RuntimeMetrics())
    try:
        store, key = engine.operator_store(), engine.keyspace.stream(TICKS)
        await publish(publisher, 1, 40)
        position = await store.stream_counters(key)
        assert position is not None
        await publish(publisher, 41, 43)
        assert await store.appended_since(key, *position) == 3
        assert await store.appended_since(engine.keyspace.stream(QUIET), "0-0", 0) == 0
    finally:
        await publisher.close()
        await engine.close()


async def test_a_bound_of_a_millisecond_and_sequence_zero_is_that_time(
    engine: Engine, publisher: Publisher
) -> None:
    store, key, ids = await five_ticks(engine, publisher)
    first_ms, last_ms = order(ids[0])[0], order(ids[-1])[0]
    assert [e for e, _ in await store.range(key, f"{first_ms}-0")] == ids
    assert await store.range(key, "-", f"({first_ms}-0") == []  # Redis may store "<ms>-0"
    assert [e for e, _ in await store.range(key, "-", f"{last_ms + 1}-0")] == ids
    assert [e for e, _ in await store.range(key, f"{last_ms + 1}-0")] == []
    newest_first = [e for e, _ in await store.range_reverse(key, f"{last_ms + 1}-0", "-", 2)]
    assert newest_first == ids[::-1][:2]


class GatedTicks(Actor):
    """Handles ticks one by one, holding the one numbered ``hold`` until ``gate`` opens."""

    name = "gated_ticks"

    def __init__(self, hold: int) -> None:
        self.hold = hold
        self.gate = asyncio.Event()
        self.handled: list[int] = []

    @handles
    async def on_tick(self, tick: MarketTick, ctx: HandlerContext) -> None:
        if tick.sequence == self.hold:
            await self.gate.wait()
        self.handled.append(tick.sequence)


async def test_groups_and_read_positions_follow_a_runner_and_its_beats(
    engine: Engine, publisher: Publisher
) -> None:
    store, key, ids = await five_ticks(engine, publisher)
    quiet = engine.keyspace.stream(QUIET)
    actor = GatedTicks(hold=3)
    group = engine.keyspace.group(actor.name)
    one_by_one = fast(batch_size=1, prefetch=False, heartbeat_interval_s=0.1)
    runner = engine.runner(actor, one_by_one, publisher)
    async with running(runner):
        await wait_until(lambda: actor.handled == [1, 2], within_s=10)
        # Holding 3: it was delivered and not acknowledged; 4 and 5 wait.
        figures: list[GroupFigures] = []

        async def holding() -> bool:
            (groups,) = await store.groups_each([key])
            figures[:] = [g for g in groups or [] if g.name == group]
            return [(g.pending, g.lag, g.last_delivered_id) for g in figures] == [(1, 2, ids[2])]

        await eventually(holding)
        assert [g.consumers for g in figures] == [1]
        positions = await store.read_positions(key)
        assert positions is not None
        last_id, groups = positions
        assert last_id == ids[-1]
        assert [(g.group, g.last_delivered_id, g.pending) for g in groups] == [(group, ids[2], 1)]

        (beats,) = await store.heartbeats_each([actor.name])
        assert beats
        assert all(abs(time.time() * 1000 - at) < 10_000 for at in beats)
        assert await store.heartbeats_each(["nobody_runs_this"]) == [[]]

        actor.gate.set()
        await wait_until(lambda: actor.handled == [1, 2, 3, 4, 5], within_s=10)

        async def drained() -> bool:
            positions = await store.read_positions(key)
            assert positions is not None
            mine = [g for g in positions[1] if g.group == group]
            return [(g.last_delivered_id, g.pending) for g in mine] == [(ids[-1], 0)]

        await eventually(drained)
        (groups,) = await store.groups_each([key])
        assert [
            (g.pending, g.lag, g.last_delivered_id) for g in groups or [] if g.name == group
        ] == [(0, 0, ids[-1])]
    assert await store.groups_each([engine.keyspace.stream("nothing.here")]) == [None]
    assert await store.read_positions(quiet) is None


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_trace_items_hold_the_events_a_commit_indexed(
    engine: Engine, publisher: Publisher
) -> None:
    store = engine.operator_store()
    (root,) = await publish(publisher, 1, 1)
    actor = TickCounter()
    async with running(engine.runner(actor, fast(), publisher)):
        await wait_until(lambda: actor.counts.get("BTC") == 1, within_s=10)

        async def indexed() -> bool:
            items = [Envelope.FromString(data) for data in await store.trace_items(root.trace_id)]
            return any(e.causation_id == root.event_id for e in items)

        await eventually(indexed)
    items = [Envelope.FromString(data) for data in await store.trace_items(root.trace_id)]
    assert {e.trace_id for e in items} == {root.trace_id}
    assert {e.event_type for e in items} >= {"portfolio.pnl.updated"}
    assert await store.trace_items("no-such-trace") == []


async def test_ping_answers_while_the_broker_is_up(engine: Engine) -> None:
    await engine.operator_store().ping()
