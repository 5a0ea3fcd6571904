"""The guarantees every engine keeps (DESIGN section 4), stated once and run on each engine.

Each test talks to a broker the suite started (``conftest.harness``) through the ``Engine``
interface only: a publisher, delivery loops, and the engine's reads of stored events, dead
letters and state. Process-level guarantees (SIGTERM drain, SIGKILL at random) are in
``test_processes.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from collections.abc import AsyncIterator, Callable

import pytest
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.core.delivery import DeliveryLoop, RunnerConfig
from runtime.core.engine import Engine
from runtime.core.metrics import RuntimeMetrics
from runtime.core.publisher import Publisher
from runtime.core.transport import Commit, LeaseLost
from tests.conformance.conftest import TICKS_IN_FOUR
from tests.conformance.harness import Harness
from tests.process.actors import FlakyTicks, TickCounter, tick

SYMBOLS = [f"S{i}" for i in range(8)]
OUTPUTS = "portfolio.pnl.updated"


def fast(**changes: object) -> RunnerConfig:
    base: dict[str, object] = {
        "consumer_name": "c1",
        "block_ms": 50,
        "lease_ttl_ms": 600,
        "retry_base_ms": 10,
        "retry_cap_ms": 40,
        "reconnect_base_ms": 20,
        "reconnect_cap_ms": 200,
    }
    base.update(changes)
    return RunnerConfig(**base)  # type: ignore[arg-type]


async def wait_until(condition: Callable[[], bool], within_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(runner: DeliveryLoop) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``runner`` for the block, then stop it (drain) and surface its errors."""
    task = asyncio.create_task(runner.run())
    try:
        yield task
    finally:
        await runner.stop()
        await task


async def publish_ticks(publisher: Publisher, per_symbol: int, first: int = 1) -> None:
    for seq in range(first, first + per_symbol):
        await asyncio.gather(
            *(publisher.publish(tick(symbol, seq), partition_key=symbol) for symbol in SYMBOLS)
        )


async def outputs(engine: Engine, topic: str = OUTPUTS) -> list[Envelope]:
    return [Envelope.FromString(data) for _, data in await engine.read(topic)]


async def stored_state(engine: Engine, domain: str, p: int = 0, n: int = 1) -> dict[str, object]:
    data = await engine.load_state(domain, p, n)
    return {} if data is None else dict(json.loads(data))


async def test_each_key_is_handled_once_and_in_order_across_partitions(
    partitioned: Engine,
) -> None:
    publisher = partitioned.publisher(producer="market_data", metrics=RuntimeMetrics())
    actor = TickCounter()  # unsplit: reads all four partitions of market.tick
    async with running(partitioned.runner(actor, fast(), publisher)):
        await publish_ticks(publisher, 50)
        await wait_until(lambda: sum(actor.counts.values()) == 400)
    await publisher.close()

    assert actor.out_of_order == 0
    assert actor.counts == dict.fromkeys(SYMBOLS, 50)
    # The producer split the ticks by key: each symbol lives in exactly one partition.
    homes: dict[str, set[int]] = {}
    total = 0
    for k in range(4):
        for _, data in await partitioned.read(f"market.tick:{k}"):
            envelope = Envelope.FromString(data)
            homes.setdefault(envelope.partition_key, set()).add(k)
            total += 1
    assert total == 400
    assert {s: ks for s, ks in homes.items()} == {s: {zlib.crc32(s.encode()) % 4} for s in SYMBOLS}
    assert len({k for ks in homes.values() for k in ks}) > 1  # the keys really spread
    assert await partitioned.read("market.tick") == []  # nothing on the unsplit topic
    produced = await outputs(partitioned)
    assert len({e.event_id for e in produced}) == 400
    state = await stored_state(partitioned, actor.name)
    assert state["counts"] == dict.fromkeys(SYMBOLS, 50)


async def test_a_split_domain_reads_only_its_partitions_and_keeps_its_keys(
    partitioned: Engine,
) -> None:
    publisher = partitioned.publisher(producer="market_data", metrics=RuntimeMetrics())
    actors = [TickCounter(), TickCounter()]
    runners = [
        partitioned.runner(actor, fast(partition=p, partitions=2, consumer_name=f"c{p}"), publisher)
        for p, actor in enumerate(actors)
    ]
    # Each reads two of the four partitions (k mod 2 == its own), never the other two.
    read = [set(runner.subscription.streams) for runner in runners]
    assert [len(streams) for streams in read] == [2, 2]
    assert not read[0] & read[1]
    async with running(runners[0]), running(runners[1]):
        await publish_ticks(publisher, 30)
        await wait_until(lambda: sum(sum(a.counts.values()) for a in actors) == 240)
    await publisher.close()
    for p, actor in enumerate(actors):
        assert set(actor.counts) == {s for s in SYMBOLS if zlib.crc32(s.encode()) % 2 == p}
        assert all(n == 30 for n in actor.counts.values())
        assert actor.out_of_order == 0
        state = await stored_state(partitioned, actor.name, p, 2)
        assert state["counts"] == actor.counts


async def test_a_failing_handler_is_retried_in_place_then_dead_lettered_and_order_holds(
    engine: Engine,
) -> None:
    publisher = engine.publisher(producer="market_data", metrics=RuntimeMetrics())
    actor = FlakyTicks(fail_times={3: 100, 5: 2})
    async with running(engine.runner(actor, fast(max_deliveries=3), publisher)):
        for seq in range(1, 8):
            await publisher.publish(tick("BTC", seq), partition_key="BTC")
        await wait_until(lambda: 7 in actor.handled)
    await publisher.close()

    # 3 gave up after three attempts; 5 succeeded on its third; nothing overtook a retry.
    assert actor.handled == [1, 2, 4, 5, 6, 7]
    assert actor.calls[3] == 3
    assert actor.calls[5] == 3
    (letter,) = await engine.dead_letters(actor.name)
    assert letter.reason == "handler_failed"
    assert letter.attempts == 3
    assert "sequence 3" in letter.error_message
    assert Envelope.FromString(letter.payload).event_type == "market.tick"
    assert sorted(int(e.causation_id != "") for e in await outputs(engine)) == [1] * 6


async def test_the_attempt_count_survives_a_restart(harness: Harness, namespace: str) -> None:
    first_engine = harness.open(namespace)
    publisher = first_engine.publisher(metrics=RuntimeMetrics())
    await publisher.publish(tick("BTC", 1), partition_key="BTC")
    first = FlakyTicks(fail_times={1: 100})
    slow = fast(max_deliveries=4, retry_base_ms=400, retry_cap_ms=400)
    async with running(first_engine.runner(first, slow, publisher)):
        await wait_until(lambda: first.calls.get(1) == 1)
    await publisher.close()
    await first_engine.close()

    second_engine = harness.open(namespace)  # a new process
    publisher = second_engine.publisher(metrics=RuntimeMetrics())
    second = FlakyTicks(fail_times={1: 100})
    async with running(second_engine.runner(second, fast(max_deliveries=4), publisher)):
        await wait_until(lambda: second.calls.get(1, 0) >= 3)
        for _ in range(500):
            if await second_engine.dead_letters(second.name):
                break
            await asyncio.sleep(0.01)
    (letter,) = await second_engine.dead_letters(second.name)
    assert letter.attempts == 4
    assert first.calls[1] + second.calls[1] == 4
    await publisher.close()
    await second_engine.close()


async def test_an_entry_that_cannot_be_opened_is_dead_lettered_at_once(engine: Engine) -> None:
    publisher = engine.publisher(metrics=RuntimeMetrics())
    actor = TickCounter()
    await publisher.log.append([("market.tick", b"\xff not an envelope")])
    await publisher.publish(tick("BTC", 1), partition_key="BTC")
    async with running(
        engine.runner(actor, fast(retry_base_ms=5_000, retry_cap_ms=5_000), publisher)
    ):
        await wait_until(lambda: actor.counts.get("BTC") == 1, within_s=5)
        for _ in range(200):
            if await engine.dead_letters(actor.name):
                break
            await asyncio.sleep(0.01)
    await publisher.close()
    (letter,) = await engine.dead_letters(actor.name)
    assert letter.reason == "undecodable"
    assert letter.attempts == 1
    assert letter.payload == b"\xff not an envelope"


async def test_a_redelivered_input_is_not_handled_twice_and_its_outputs_keep_their_ids(
    harness: Harness, namespace: str
) -> None:
    engine = harness.open(namespace)
    publisher = engine.publisher(metrics=RuntimeMetrics())
    first = TickCounter()
    async with running(engine.runner(first, fast(), publisher)):
        await publish_ticks(publisher, 5)
        await wait_until(lambda: sum(first.counts.values()) == 40)
    before = {e.event_id for e in await outputs(engine)}
    # The same events again (a producer's retry after a lost reply): skipped by their marks.
    for _, data in await engine.read("market.tick"):
        await publisher.publish_envelope(Envelope.FromString(data))
    second = TickCounter()
    async with running(engine.runner(second, fast(), publisher)):
        await publisher.publish(tick("S0", 6), partition_key="S0")
        await wait_until(lambda: second.counts.get("S0") == 6)
    await publisher.close()
    assert len(second.seen) == 1  # only the new tick ran a handler
    assert second.counts == {**dict.fromkeys(SYMBOLS, 5), "S0": 6}
    after = {e.event_id for e in await outputs(engine)}
    assert before < after
    assert len(after) == 41
    await engine.close()


async def test_a_second_runner_stands_by_and_takes_over_when_the_owner_stops(
    engine: Engine,
) -> None:
    publisher = engine.publisher(metrics=RuntimeMetrics())
    owner, standby = TickCounter(), TickCounter()
    owner_runner = engine.runner(owner, fast(consumer_name="a"), publisher)
    standby_runner = engine.runner(standby, fast(consumer_name="b"), publisher)
    async with running(owner_runner):
        # Owning, not only running: the first to take the lease owns the partition, and an
        # engine may take a while to start (a cluster client learns the slot map first).
        await publish_ticks(publisher, 1)
        await wait_until(lambda: sum(owner.counts.values()) == 8)
        async with running(standby_runner):
            await wait_until(lambda: standby_runner.running)
            await publish_ticks(publisher, 2, first=2)
            await wait_until(lambda: sum(owner.counts.values()) == 24)
            await owner_runner.stop()  # a clean stop gives the lease up
            await publish_ticks(publisher, 2, first=4)
            await wait_until(lambda: sum(standby.counts.values()) == 40)
    await publisher.close()
    # One owner at a time: the stand-by handled nothing while the owner lived, then took the
    # owner's state over and carried every key on in order.
    assert owner.counts == dict.fromkeys(SYMBOLS, 3)
    assert standby.counts == dict.fromkeys(SYMBOLS, 5)
    assert standby.out_of_order == 0
    assert len(standby.seen) == 16
    state = await stored_state(engine, owner.name)
    assert state["counts"] == dict.fromkeys(SYMBOLS, 5)


async def test_a_stale_owner_cannot_commit(engine: Engine) -> None:
    publisher = engine.publisher(metrics=RuntimeMetrics())
    old = engine.runner(TickCounter(), fast(), publisher).committer
    new = engine.runner(TickCounter(), fast(consumer_name="c2"), publisher).committer
    stale = await old.acquire("old/1", 200)
    assert stale is not None
    assert await new.acquire("new/1", 10_000) is None  # the old lease is live
    await asyncio.sleep(0.3)
    current = await new.acquire("new/1", 10_000)
    assert current is not None
    assert current.token > stale.token
    assert not await old.renew(stale, 10_000)
    with pytest.raises(LeaseLost):
        await old.commit(Commit(state=b'{"stale": true}', lease=stale))
    await new.commit(Commit(state=b'{"fresh": true}', lease=current))
    assert await engine.load_state(TickCounter.name) == b'{"fresh": true}'
    await new.close()
    await old.close()
    await publisher.close()


async def test_after_the_broker_restarts_the_flow_resumes_by_itself_and_nothing_is_lost(
    harness: Harness, namespace: str
) -> None:
    engine = harness.open(namespace, TICKS_IN_FOUR)
    publisher = engine.publisher(producer="market_data", metrics=RuntimeMetrics())
    actor = TickCounter()
    async with running(engine.runner(actor, fast(), publisher)):
        await publish_ticks(publisher, 10)
        await wait_until(lambda: sum(actor.counts.values()) == 80)
        harness.kill()
        producer = asyncio.create_task(publish_ticks(publisher, 10, first=11))
        await asyncio.sleep(0.5)
        harness.restart()
        await asyncio.wait_for(producer, 30)
        await wait_until(lambda: sum(actor.counts.values()) >= 160, within_s=30)
        await asyncio.sleep(0.2)
    await publisher.close()
    assert actor.counts == dict.fromkeys(SYMBOLS, 20)
    assert actor.out_of_order == 0
    produced = await outputs(engine)
    assert len({e.causation_id for e in produced}) == 160
    await engine.close()
