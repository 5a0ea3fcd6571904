"""Delivery guarantees a-c: at-least-once, effectively-once, retries with backoff."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from quantum.events.v1.envelope_pb2 import Envelope
from quantum.events.v1.market_pb2 import MarketTick

from runtime.adapters.redis.bus import ENVELOPE_FIELD, EventBus
from runtime.adapters.redis.runner import DomainRunner, RunnerConfig, group_name
from runtime.core.actor import HandlerContext, deliver, handles
from runtime.core.dead_letters import read_dead_letters
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from runtime.core.transport import Commit, Committer
from tests.integration.bus_support import running, wait_until
from tests.process.actors import FlakyTicks, TickCounter, tick

FAST = RunnerConfig(consumer_name="c1", block_ms=50, retry_base_ms=10, retry_cap_ms=40)


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


async def pending(aredis: aioredis.Redis, keyspace: Keyspace, domain: str) -> int:
    info = await aredis.xpending(keyspace.stream("market.tick"), group_name(keyspace, domain))
    return int(info["pending"])


async def test_input_is_acknowledged_only_with_its_outputs_in_one_commit(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    actor = TickCounter()
    runner = DomainRunner(actor, aredis, keyspace, bus, FAST)
    gated = GatedCommitter(runner.committer)
    runner.committer = gated
    async with running(runner):
        await bus.publish_envelopes([await _sealed(bus, 1)])
        await asyncio.wait_for(gated.waiting.wait(), 10)
        # Handled, but nothing of it is in Redis yet: no output, the input still pending.
        assert actor.counts == {"BTC": 1}
        assert await aredis.xlen(keyspace.stream("portfolio.pnl.updated")) == 0
        assert await pending(aredis, keyspace, actor.name) == 1
        gated.gate.set()
        for _ in range(500):
            if await pending(aredis, keyspace, actor.name) == 0:
                break
            await asyncio.sleep(0.01)
        # The commit landed whole: the output is there exactly when the input is acknowledged.
        assert await aredis.xlen(keyspace.stream("portfolio.pnl.updated")) == 1
    assert await pending(aredis, keyspace, actor.name) == 0
    await bus.close()


async def _sealed(bus: EventBus, seq: int) -> Envelope:
    from runtime.core.envelope import seal

    return seal(tick("BTC", seq), producer="market_data", partition_key="BTC")


async def test_a_duplicate_entry_of_one_event_is_acknowledged_without_running_the_handler(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    metrics = RuntimeMetrics()
    bus = EventBus(aredis, keyspace, metrics=metrics)
    actor = TickCounter()
    envelope = await bus.publish(tick("BTC", 1))
    await bus.publish_envelope(envelope)  # as a publisher retry after a lost reply would
    await bus.publish(tick("BTC", 2))
    runner = DomainRunner(actor, aredis, keyspace, bus, FAST, metrics=metrics)
    async with running(runner):
        await wait_until(lambda: actor.counts.get("BTC") == 2)
        await asyncio.sleep(0.1)
    assert actor.out_of_order == 0
    assert metrics.skipped.value(actor.name, "market.tick") == 1
    assert metrics.consumed.value(actor.name, "market.tick") == 2
    assert await pending(aredis, keyspace, actor.name) == 0
    await bus.close()


async def test_processed_marks_skip_an_input_handled_in_an_earlier_life(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    first = TickCounter()
    envelope = await bus.publish(tick("BTC", 1))
    async with running(DomainRunner(first, aredis, keyspace, bus, FAST)):
        await wait_until(lambda: first.counts.get("BTC") == 1)
    # A replay of the very event (same id) into the stream, after a restart.
    await bus.publish_envelope(envelope)
    second = TickCounter()
    metrics = RuntimeMetrics()
    async with running(DomainRunner(second, aredis, keyspace, bus, FAST, metrics=metrics)):
        await wait_until(lambda: metrics.skipped.value(second.name, "market.tick") == 1)
    assert second.seen == []
    assert await aredis.xlen(keyspace.stream("portfolio.pnl.updated")) == 1
    await bus.close()


async def test_outputs_of_a_redelivered_input_have_the_same_ids() -> None:
    envelope = await _sealed(EventBus.__new__(EventBus), 7)
    first = await deliver(TickCounter(), envelope)
    again = await deliver(TickCounter(), envelope)
    assert [e.event_id for e in first] == [e.event_id for e in again]
    assert first == again


async def test_a_failing_handler_is_retried_with_backoff_until_it_succeeds(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    metrics = RuntimeMetrics()
    bus = EventBus(aredis, keyspace, metrics=metrics)
    actor = FlakyTicks(fail_times={2: 2})
    async with running(DomainRunner(actor, aredis, keyspace, bus, FAST, metrics=metrics)):
        await bus.publish_many([tick("BTC", i) for i in (1, 2, 3)])
        await wait_until(lambda: actor.handled == [1, 2, 3])
    assert actor.calls == {1: 1, 2: 3, 3: 1}
    assert metrics.retries.value(actor.name, "market.tick") == 2
    assert await read_dead_letters(aredis, keyspace, actor.name) == []
    assert await pending(aredis, keyspace, actor.name) == 0
    await bus.close()


async def test_after_max_deliveries_the_entry_is_dead_lettered_and_the_actor_goes_on(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    metrics = RuntimeMetrics()
    bus = EventBus(aredis, keyspace, metrics=metrics)
    actor = FlakyTicks(fail_times={2: 100})
    config = RunnerConfig(
        consumer_name="c1", block_ms=50, max_deliveries=3, retry_base_ms=10, retry_cap_ms=20
    )
    async with running(DomainRunner(actor, aredis, keyspace, bus, config, metrics=metrics)):
        published = await bus.publish_many([tick("BTC", i) for i in (1, 2, 3)])
        await wait_until(lambda: actor.handled == [1, 3])
    assert actor.calls[2] == 3
    (letter,) = await read_dead_letters(aredis, keyspace, actor.name)
    assert letter.reason == "handler_failed"
    assert letter.attempts == 3
    assert letter.error_type == "RuntimeError"
    assert "sequence 2" in letter.error_message
    assert letter.event_id == published[1].event_id
    assert letter.event_type == "market.tick"
    assert letter.consumer == "c1"
    assert letter.failed_at_ms > 0
    assert letter.original_stream == keyspace.stream("market.tick")
    entries = await aredis.xrange(keyspace.stream("market.tick"), letter.original_entry_id, "+", 1)
    assert entries[0][1][ENVELOPE_FIELD] == letter.payload
    assert metrics.dead_letters.value(actor.name, "handler_failed") == 1
    assert await pending(aredis, keyspace, actor.name) == 0
    await bus.close()


async def test_the_attempt_count_survives_a_restart(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    config = RunnerConfig(
        consumer_name="c1", block_ms=50, max_deliveries=4, retry_base_ms=400, retry_cap_ms=400
    )
    first = FlakyTicks(fail_times={1: 100})
    await bus.publish(tick("BTC", 1))
    async with running(DomainRunner(first, aredis, keyspace, bus, config)):
        await wait_until(lambda: first.calls.get(1) == 1)
    # Stopped during the backoff: the entry stays pending, delivered once.
    assert await pending(aredis, keyspace, first.name) == 1
    second = FlakyTicks(fail_times={1: 100})
    fast = RunnerConfig(
        consumer_name="c1", block_ms=50, max_deliveries=4, retry_base_ms=10, retry_cap_ms=20
    )
    async with running(DomainRunner(second, aredis, keyspace, bus, fast)):
        await wait_until(lambda: second.calls.get(1) == 3)
        for _ in range(500):
            if await read_dead_letters(aredis, keyspace, second.name):
                break
            await asyncio.sleep(0.01)
    (letter,) = await read_dead_letters(aredis, keyspace, second.name)
    assert letter.attempts == 4
    assert first.calls[1] + second.calls[1] == 4
    await bus.close()


async def test_a_retry_cut_short_by_stop_leaves_the_prefetched_entries_pending(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    for i in (1, 2, 3):
        await bus.publish(tick("BTC", i))
    # One entry per read: while entry 1 fails and waits for its retry, entry 2 is prefetched.
    config = RunnerConfig("c1", batch_size=1, block_ms=50, retry_base_ms=5_000, retry_cap_ms=5_000)
    actor = FlakyTicks(fail_times={1: 100})
    async with running(DomainRunner(actor, aredis, keyspace, bus, config)):
        await wait_until(lambda: actor.calls.get(1) == 1)
    assert actor.handled == []  # nothing after the failed entry was handled, nor acknowledged
    assert await pending(aredis, keyspace, actor.name) == 2
    # The next life takes them in order: the failed entry first.
    again = FlakyTicks()
    async with running(DomainRunner(again, aredis, keyspace, bus, FAST)):
        await wait_until(lambda: again.handled == [1, 2, 3])
    assert await pending(aredis, keyspace, actor.name) == 0
    await bus.close()


class BtcTicks(TickCounter):
    """Counts BTC ticks only; any other tick is handled and leaves the state as it was."""

    name = "btc_ticks"

    def __init__(self) -> None:
        super().__init__()
        self.ignored = 0  # not part of the state

    @handles
    def on_tick(self, tick: MarketTick, ctx: HandlerContext) -> None:
        if tick.symbol == "BTC":
            super().on_tick(tick, ctx)
        else:
            self.ignored += 1


class RecordingCommitter:
    """Wraps a runner's committer: notes the state each commit carries, then commits it."""

    def __init__(self, inner: Committer) -> None:
        self.inner = inner
        self.states: list[bytes | None] = []

    async def commit(self, commit: Commit) -> None:
        await self.inner.commit(commit)
        self.states.append(commit.state)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_commit_stores_the_state_only_when_the_batch_changed_it(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    actor = BtcTicks()
    runner = DomainRunner(actor, aredis, keyspace, bus, FAST)
    recorder = RecordingCommitter(runner.committer)
    runner.committer = recorder
    async with running(runner):
        await bus.publish(tick("BTC", 1))
        await wait_until(lambda: len(recorder.states) == 1)
        await bus.publish(tick("ETH", 1))
        await wait_until(lambda: len(recorder.states) == 2)
        await bus.publish(tick("BTC", 2))
        await wait_until(lambda: len(recorder.states) == 3)
    first, unchanged, second = recorder.states
    assert first is not None
    assert b'"BTC": 1' in first
    assert unchanged is None  # "keep the stored one": no SET of the same bytes
    assert second is not None
    assert b'"BTC": 2' in second
    assert actor.ignored == 1
    assert await aredis.get(keyspace.state(actor.name)) == actor.snapshot_state()
    assert await pending(aredis, keyspace, actor.name) == 0
    await bus.close()


async def test_the_first_commit_after_a_restart_stores_the_state_even_when_unchanged(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    actor = BtcTicks()
    state = keyspace.state(actor.name)
    await bus.publish(tick("BTC", 1))
    async with running(DomainRunner(actor, aredis, keyspace, bus, FAST)):
        await wait_until(lambda: actor.counts.get("BTC") == 1)
    await aredis.delete(state)  # lost (an operator's delete): the next life starts empty
    again = BtcTicks()
    runner = DomainRunner(again, aredis, keyspace, bus, FAST)
    recorder = RecordingCommitter(runner.committer)
    runner.committer = recorder
    async with running(runner):
        await bus.publish(tick("ETH", 1))
        await wait_until(lambda: len(recorder.states) == 1)
    # Nothing was stored to keep: the unchanged initial state is written.
    assert recorder.states[0] == again.snapshot_state()
    assert await aredis.get(state) == again.snapshot_state()
    await bus.close()
