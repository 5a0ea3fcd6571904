"""The delivery guarantees on the in-memory transport, with the real DeliveryLoop: the same
scenarios as the Redis guarantee tests (tests/integration/test_bus_*.py), in one process."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from quantum.events.v1.envelope_pb2 import Envelope
from quantum.events.v1.market_pb2 import MarketTick

from runtime.adapters.memory import MemoryBroker, MemoryBus, MemoryRunner
from runtime.core.delivery import RunnerConfig
from runtime.core.envelope import seal
from runtime.core.metrics import RuntimeMetrics
from runtime.core.transport import Commit, Committer
from tests.integration.bus_support import wait_until
from tests.integration.test_permanent_failures import StrictTicks
from tests.memory.support import FAST, PNL, TICKS, pending, running
from tests.process.actors import FlakyTicks, TickCounter, tick


class GatedCommitter:
    """Wraps a runner's committer: each commit waits at a gate (to look before it lands)."""

    def __init__(self, inner: Committer) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def commit(self, commit: Commit) -> None:
        self.waiting.set()
        await self.gate.wait()
        await self.inner.commit(commit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def sealed(seq: int, symbol: str = "BTC") -> Envelope:
    return seal(tick(symbol, seq), producer="market_data", partition_key=symbol)


async def test_input_is_acknowledged_only_with_its_outputs_in_one_commit() -> None:
    broker = MemoryBroker()
    bus = MemoryBus(broker, metrics=RuntimeMetrics())
    actor = TickCounter()
    runner = MemoryRunner(actor, broker, FAST, metrics=RuntimeMetrics())
    gated = GatedCommitter(runner.committer)
    runner.committer = gated
    async with running(runner):
        await bus.publish_envelopes([sealed(1)])
        await asyncio.wait_for(gated.waiting.wait(), 10)
        # Handled, but nothing of it is stored yet: no output, the input still pending.
        assert actor.counts == {"BTC": 1}
        assert broker.length(broker.stream_of(PNL)) == 0
        assert pending(broker, actor.name) == 1
        assert broker.states == {}
        gated.gate.set()
        await wait_until(lambda: pending(broker, actor.name) == 0)
        # The commit landed whole: output, acknowledgement, mark and state together.
        assert broker.length(broker.stream_of(PNL)) == 1
        assert len(broker.processed_marks[actor.name]) == 1
        assert broker.states
    await bus.close()


async def test_a_duplicate_entry_of_one_event_is_acknowledged_without_running_the_handler() -> None:
    broker = MemoryBroker()
    metrics = RuntimeMetrics()
    bus = MemoryBus(broker, metrics=metrics)
    actor = TickCounter()
    envelope = await bus.publish(tick("BTC", 1))
    await bus.publish_envelope(envelope)  # as a publisher retry after a lost reply would
    await bus.publish(tick("BTC", 2))
    async with running(MemoryRunner(actor, broker, FAST, metrics=metrics)):
        await wait_until(lambda: actor.counts.get("BTC") == 2)
        await wait_until(lambda: pending(broker, actor.name) == 0)
    assert actor.out_of_order == 0
    assert metrics.skipped.value(actor.name, TICKS) == 1
    assert metrics.consumed.value(actor.name, TICKS) == 2
    assert broker.length(broker.stream_of(PNL)) == 2
    await bus.close()


async def test_processed_marks_skip_an_input_handled_in_an_earlier_life() -> None:
    broker = MemoryBroker()
    bus = MemoryBus(broker, metrics=RuntimeMetrics())
    first = TickCounter()
    envelope = await bus.publish(tick("BTC", 1))
    async with running(MemoryRunner(first, broker, FAST, metrics=RuntimeMetrics())):
        await wait_until(lambda: first.counts.get("BTC") == 1)
    await bus.publish_envelope(envelope)  # a replay of the very event, after a restart
    second = TickCounter()
    metrics = RuntimeMetrics()
    async with running(MemoryRunner(second, broker, FAST, metrics=metrics)):
        await wait_until(lambda: metrics.skipped.value(second.name, TICKS) == 1)
    assert second.seen == []
    assert second.counts == {"BTC": 1}  # the state committed by the first life, restored
    assert broker.length(broker.stream_of(PNL)) == 1
    await bus.close()


async def test_a_failing_handler_is_retried_with_backoff_until_it_succeeds() -> None:
    broker = MemoryBroker()
    metrics = RuntimeMetrics()
    bus = MemoryBus(broker, metrics=metrics)
    actor = FlakyTicks(fail_times={2: 2})
    async with running(MemoryRunner(actor, broker, FAST, metrics=metrics)):
        await bus.publish_many([tick("BTC", i) for i in (1, 2, 3)])
        await wait_until(lambda: actor.handled == [1, 2, 3])
    assert actor.calls == {1: 1, 2: 3, 3: 1}
    assert metrics.retries.value(actor.name, TICKS) == 2
    assert broker.dead_letters.get(actor.name, []) == []
    assert pending(broker, actor.name) == 0
    await bus.close()


async def test_after_max_deliveries_the_entry_is_dead_lettered_and_the_actor_goes_on() -> None:
    broker = MemoryBroker()
    metrics = RuntimeMetrics()
    bus = MemoryBus(broker, metrics=metrics)
    actor = FlakyTicks(fail_times={2: 100})
    config = RunnerConfig(
        consumer_name="c1", block_ms=50, max_deliveries=3, retry_base_ms=10, retry_cap_ms=20
    )
    async with running(MemoryRunner(actor, broker, config, metrics=metrics)):
        published = await bus.publish_many([tick("BTC", i) for i in (1, 2, 3)])
        await wait_until(lambda: actor.handled == [1, 3])
        await wait_until(lambda: pending(broker, actor.name) == 0)
    assert actor.calls[2] == 3
    (letter,) = broker.dead_letters[actor.name]
    assert letter.reason == "handler_failed"
    assert letter.attempts == 3
    assert letter.error_type == "RuntimeError"
    assert "sequence 2" in letter.error_message
    assert letter.event_id == published[1].event_id
    assert letter.event_type == TICKS
    assert letter.consumer == "c1"
    assert letter.original_stream == broker.stream_of(TICKS)
    entries = {e.entry_id.decode(): e.data for _, e in broker.entries(letter.original_stream)}
    assert entries[letter.original_entry_id] == letter.payload
    assert metrics.dead_letters.value(actor.name, "handler_failed") == 1
    await bus.close()


async def test_the_attempt_count_survives_a_restart() -> None:
    broker = MemoryBroker()
    bus = MemoryBus(broker, metrics=RuntimeMetrics())
    slow = RunnerConfig("c1", block_ms=50, max_deliveries=4, retry_base_ms=400, retry_cap_ms=400)
    first = FlakyTicks(fail_times={1: 100})
    await bus.publish(tick("BTC", 1))
    async with running(MemoryRunner(first, broker, slow, metrics=RuntimeMetrics())):
        await wait_until(lambda: first.calls.get(1) == 1)
    # Stopped during the backoff: the entry stays pending, delivered once.
    assert pending(broker, first.name) == 1
    second = FlakyTicks(fail_times={1: 100})
    fast = RunnerConfig("c1", block_ms=50, max_deliveries=4, retry_base_ms=10, retry_cap_ms=20)
    async with running(MemoryRunner(second, broker, fast, metrics=RuntimeMetrics())):
        await wait_until(lambda: bool(broker.dead_letters.get(second.name)))
    (letter,) = broker.dead_letters[second.name]
    assert letter.attempts == 4
    assert second.calls[1] == 3
    assert first.calls[1] + second.calls[1] == 4
    await bus.close()


async def test_a_retry_cut_short_by_stop_leaves_the_prefetched_entries_pending() -> None:
    broker = MemoryBroker()
    bus = MemoryBus(broker, metrics=RuntimeMetrics())
    for i in (1, 2, 3):
        await bus.publish(tick("BTC", i))
    config = RunnerConfig("c1", batch_size=1, block_ms=50, retry_base_ms=5_000, retry_cap_ms=5_000)
    actor = FlakyTicks(fail_times={1: 100})
    async with running(MemoryRunner(actor, broker, config, metrics=RuntimeMetrics())):
        await wait_until(lambda: actor.calls.get(1) == 1)
    assert actor.handled == []  # nothing after the failed entry was handled, nor acknowledged
    assert pending(broker, actor.name) == 2
    again = FlakyTicks()
    async with running(MemoryRunner(again, broker, FAST, metrics=RuntimeMetrics())):
        await wait_until(lambda: again.handled == [1, 2, 3])
    assert pending(broker, actor.name) == 0
    await bus.close()


@pytest.mark.parametrize("symbol", ["BAD", "ZERO", "NAN"])
async def test_a_permanent_failure_is_dead_lettered_at_once_without_backoff(symbol: str) -> None:
    broker = MemoryBroker()
    metrics = RuntimeMetrics()
    bus = MemoryBus(broker, metrics=metrics)
    await bus.publish(MarketTick(symbol=symbol, price="0", sequence=1))
    await bus.publish(tick("GOOD", 1))
    actor = StrictTicks()
    # A long retry base: were the entry retried even once, the test would take seconds.
    config = RunnerConfig("c1", block_ms=50, retry_base_ms=5_000, max_deliveries=5)
    started = time.monotonic()
    async with running(MemoryRunner(actor, broker, config, metrics=metrics)):
        await wait_until(lambda: actor.handled == ["GOOD"])
        elapsed = time.monotonic() - started
    (letter,) = broker.dead_letters[actor.name]
    assert letter.reason == "invalid"
    assert letter.attempts == 1
    assert elapsed < 2.0
    assert metrics.retries.value(actor.name, TICKS) == 0
    assert pending(broker, actor.name) == 0
    await bus.close()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\x00 not protobuf", "undecodable"),
        (b"", "invalid"),
    ],
    ids=["garbage", "empty"],
)
async def test_an_entry_that_cannot_be_opened_is_dead_lettered_at_once(
    data: bytes, reason: str
) -> None:
    broker = MemoryBroker()
    bus = MemoryBus(broker, metrics=RuntimeMetrics())
    bad_id = broker.append(broker.stream_of(TICKS), data)
    await bus.publish(tick("BTC", 1))
    actor = TickCounter()
    async with running(MemoryRunner(actor, broker, FAST, metrics=RuntimeMetrics())):
        await wait_until(lambda: actor.counts.get("BTC") == 1)
    (letter,) = broker.dead_letters[actor.name]
    assert letter.reason == reason
    assert letter.attempts == 1
    assert letter.original_entry_id == bad_id.decode()
    assert letter.payload == data
    assert pending(broker, actor.name) == 0
    await bus.close()


async def test_partitions_keep_every_key_in_order_on_one_loop() -> None:
    broker = MemoryBroker()
    bus = MemoryBus(broker, metrics=RuntimeMetrics())
    symbols = [f"S{i}" for i in range(8)]
    for seq in range(1, 41):
        await bus.publish_envelopes([sealed(seq, symbol) for symbol in symbols])
    actors = [TickCounter(), TickCounter()]
    loops = [
        MemoryRunner(
            actor,
            broker,
            RunnerConfig(f"c{index}", block_ms=50, batch_size=7, partition=index, partitions=2),
            metrics=RuntimeMetrics(),
        )
        for index, actor in enumerate(actors)
    ]
    async with running(loops[0]), running(loops[1]):
        await wait_until(lambda: sum(sum(a.counts.values()) for a in actors) == 8 * 40)
    assert all(actor.out_of_order == 0 for actor in actors)
    owned = [set(actor.counts) for actor in actors]
    assert owned[0].isdisjoint(owned[1])
    assert owned[0] | owned[1] == set(symbols)
    assert all(n == 40 for actor in actors for n in actor.counts.values())
    await bus.close()


async def test_a_new_owner_first_finishes_what_a_dead_consumer_left_pending() -> None:
    broker = MemoryBroker()
    bus = MemoryBus(broker, metrics=RuntimeMetrics())
    await bus.publish_many([tick("BTC", i) for i in (1, 2, 3)])
    group = broker.keyspace.group(TickCounter.name)
    stream = broker.stream_of(TICKS)
    broker.create_group(stream, group)
    taken = broker.read_new(stream, group, "dead", 10)  # delivered, then its consumer died
    assert len(taken) == 3
    actor = TickCounter()
    config = RunnerConfig("alive", block_ms=50, prefetch=False)
    async with running(MemoryRunner(actor, broker, config, metrics=RuntimeMetrics())):
        await wait_until(lambda: actor.counts.get("BTC") == 3)
        await wait_until(lambda: pending(broker, actor.name) == 0)
    assert actor.out_of_order == 0
    await bus.close()


async def test_an_outage_is_waited_out_and_nothing_is_lost_or_doubled() -> None:
    broker = MemoryBroker()
    metrics = RuntimeMetrics()
    bus = MemoryBus(broker, metrics=metrics)
    actor = TickCounter()
    config = RunnerConfig("c1", block_ms=20, reconnect_base_ms=5, reconnect_cap_ms=20)
    async with running(MemoryRunner(actor, broker, config, metrics=metrics)):
        await bus.publish_many([tick("BTC", i) for i in range(1, 6)])
        await wait_until(lambda: actor.counts.get("BTC") == 5)
        broker.go_down()
        publishing = asyncio.ensure_future(bus.publish_many([tick("BTC", i) for i in range(6, 11)]))
        await asyncio.sleep(0.2)
        assert not publishing.done()  # the publisher retries, the loop waits
        assert actor.counts["BTC"] == 5
        broker.come_back()
        await publishing
        await wait_until(lambda: actor.counts.get("BTC") == 10)
        await wait_until(lambda: pending(broker, actor.name) == 0)
    assert actor.out_of_order == 0
    assert broker.length(broker.stream_of(PNL)) == 10
    assert metrics.redis_errors.value("runner") > 0
    await bus.close()


async def test_a_group_deleted_under_a_running_consumer_is_recreated_where_it_acknowledged() -> (
    None
):
    broker = MemoryBroker()
    bus = MemoryBus(broker, metrics=RuntimeMetrics())
    actor = TickCounter()
    async with running(MemoryRunner(actor, broker, FAST, metrics=RuntimeMetrics())):
        await bus.publish_many([tick("BTC", i) for i in (1, 2)])
        await wait_until(lambda: actor.counts.get("BTC") == 2)
        assert broker.destroy_group(broker.stream_of(TICKS), broker.keyspace.group(actor.name))
        await bus.publish_many([tick("BTC", i) for i in (3, 4)])
        await wait_until(lambda: actor.counts.get("BTC") == 4)
    assert actor.out_of_order == 0
    assert broker.length(broker.stream_of(PNL)) == 4
    await bus.close()


async def test_a_loop_without_prefetch_stops_in_the_middle_of_a_backlog() -> None:
    broker = MemoryBroker()
    bus = MemoryBus(broker, metrics=RuntimeMetrics())
    for start in range(1, 2001, 500):
        await bus.publish_many([tick("BTC", i) for i in range(start, start + 500)])
    actor = TickCounter()
    config = RunnerConfig("c1", block_ms=50, batch_size=10, prefetch=False)
    loop = MemoryRunner(actor, broker, config, metrics=RuntimeMetrics())
    task = asyncio.create_task(loop.run())
    await wait_until(lambda: actor.counts.get("BTC", 0) > 0)
    await asyncio.wait_for(loop.stop(), 5)
    await task
    handled = actor.counts["BTC"]
    assert handled < 2000  # stopped between batches, not after the whole backlog
    assert pending(broker, actor.name) == 0  # what it took, it committed
    assert broker.length(broker.stream_of(PNL)) == handled
    await bus.close()


def test_group_and_state_names_match_the_redis_engines() -> None:
    from runtime.adapters.memory import group_name, state_key
    from runtime.adapters.redis.subscription import group_name as redis_group
    from runtime.adapters.redis.subscription import state_key as redis_state

    broker = MemoryBroker()
    for partition, partitions in ((0, 1), (1, 3)):
        assert group_name(broker, "d", partition, partitions) == redis_group(
            broker.keyspace, "d", partition, partitions
        )
        assert state_key(broker, "d", partition, partitions) == redis_state(
            broker.keyspace, "d", partition, partitions
        )


async def test_a_retry_that_finds_the_entry_no_longer_its_own_never_lets_the_next_overtake() -> (
    None
):
    """``Subscription.redeliver`` answers False: the entry is not this consumer's any more
    (taken by another owner, and it may come back). Going on with the batch would hand the
    entries after it to the handler first; the loop rolls back and stands by instead, and
    every entry is handled in order once it owns the partition again."""
    broker = MemoryBroker()
    bus = MemoryBus(broker, metrics=RuntimeMetrics())
    actor = FlakyTicks(fail_times={1: 1})
    runner = MemoryRunner(actor, broker, FAST, metrics=RuntimeMetrics())
    refusals = [False]  # the first retry is refused: the entry stays pending

    original = runner.subscription.redeliver

    async def refuse_once(delivery: Any) -> bool:
        if refusals:
            return refusals.pop()
        return await original(delivery)

    runner.subscription.redeliver = refuse_once  # type: ignore[method-assign]
    for seq in (1, 2, 3):
        await bus.publish(tick("BTC", seq), partition_key="BTC")
    async with running(runner):
        await wait_until(lambda: 3 in actor.handled)
    assert actor.handled == [1, 2, 3]
    await bus.close()
