"""What an operator changes through an engine's ``OperatorStore`` (``Engine.operator_store``),
held to the same behaviour on every engine: dead letters redriven once and purged with an
audit entry, a state repaired under a running owner, a namespace deleted."""

from __future__ import annotations

import asyncio
import json

from quantum.events.v1.market_pb2 import MarketTick

from runtime.core.actor import HandlerContext, handles
from runtime.core.dead_letters import DeadLetter
from runtime.core.engine import Engine
from runtime.core.metrics import RuntimeMetrics
from tests.conformance.test_guarantees import fast, running, stored_state, wait_until
from tests.process.actors import FlakyTicks, TickCounter, tick


async def dead_letters_of_failing_ticks(engine: Engine, failing: list[int]) -> list[DeadLetter]:
    """Ticks 1..4 of BTC through an actor that fails ``failing`` for good: their letters."""
    publisher = engine.publisher(producer="market_data", metrics=RuntimeMetrics())
    actor = FlakyTicks(fail_times=dict.fromkeys(failing, 100))
    async with running(engine.runner(actor, fast(max_deliveries=2), publisher)):
        for seq in range(1, 5):
            await publisher.publish(tick("BTC", seq), partition_key="BTC")
        await wait_until(lambda: 4 in actor.handled)
        for _ in range(500):
            if len(await engine.dead_letters(actor.name)) == len(failing):
                break
            await asyncio.sleep(0.01)
    await publisher.close()
    letters = await engine.dead_letters(actor.name)
    assert len(letters) == len(failing)
    return letters


async def test_a_dead_letter_is_redriven_once_even_by_concurrent_operators(
    engine: Engine,
) -> None:
    (letter,) = await dead_letters_of_failing_ticks(engine, [2])
    store = engine.operator_store()
    domain, stream = FlakyTicks.name, engine.keyspace.stream("market.tick")
    assert await store.redriven(domain, [letter.entry_id]) == [None]

    done = await asyncio.gather(
        *(store.redrive(domain, letter.entry_id, stream, letter.payload, 1000) for _ in range(4))
    )
    assert sorted(done) == [False, False, False, True]
    assert not await store.redrive(domain, letter.entry_id, stream, letter.payload, 1000)

    copies = [entry for entry, data in await engine.read("market.tick") if data == letter.payload]
    assert len(copies) == 2  # the original and the one redrive
    assert await store.redriven(domain, [letter.entry_id, "1-1"]) == [copies[1].encode(), None]


async def test_purging_dead_letters_writes_the_audit_entry_and_removes_them(
    engine: Engine,
) -> None:
    first, second = await dead_letters_of_failing_ticks(engine, [2, 3])
    store = engine.operator_store()
    domain, stream = FlakyTicks.name, engine.keyspace.stream("market.tick")
    assert await store.redrive(domain, first.entry_id, stream, first.payload, 1000)
    audit = {"action": "dead_letters.purge", "by": "tester", "entry_ids": first.entry_id}

    await store.purge_dead_letters(domain, [first.entry_id], audit, 100)

    assert [letter.entry_id for letter in await engine.dead_letters(domain)] == [second.entry_id]
    assert await store.redriven(domain, [first.entry_id]) == [None]
    # Purging a letter already gone changes nothing but records the request again.
    await store.purge_dead_letters(domain, [first.entry_id], {"action": "again"}, 100)
    assert [letter.entry_id for letter in await engine.dead_letters(domain)] == [second.entry_id]
    entries = await store.range(engine.keyspace.audit())
    assert [fields for _, fields in entries] == [
        {k.encode(): v.encode() for k, v in audit.items()},
        {b"action": b"again"},
    ]


async def test_a_repaired_state_is_what_a_running_owner_carries_on_from(engine: Engine) -> None:
    publisher = engine.publisher(producer="market_data", metrics=RuntimeMetrics())
    actor = TickCounter()
    store = engine.operator_store()
    async with running(engine.runner(actor, fast(), publisher)):
        for seq in (1, 2, 3):
            await publisher.publish(tick("BTC", seq), partition_key="BTC")
        await wait_until(lambda: actor.counts.get("BTC") == 3)
        for _ in range(500):
            if (await stored_state(engine, actor.name)).get("counts") == {"BTC": 3}:
                break
            await asyncio.sleep(0.01)
        assert await store.state_epoch(actor.name) == 0

        repaired = {"counts": {"BTC": 100}, "last_seq": {"BTC": 3}, "ooo": 0}
        epoch = await store.store_repaired_state(
            actor.name,
            0,
            1,
            json.dumps(repaired).encode(),
            lambda e: f"repair to epoch {e}".encode(),
            10,
        )
        assert epoch == 1
        assert await store.state_epoch(actor.name) == 1
        assert await stored_state(engine, actor.name) == repaired

        for seq in (4, 5):
            await publisher.publish(tick("BTC", seq), partition_key="BTC")
        await wait_until(lambda: actor.counts.get("BTC") == 102)
    await publisher.close()

    assert (await stored_state(engine, actor.name))["counts"] == {"BTC": 102}
    assert actor.out_of_order == 0
    records = await store.range_reverse(engine.keyspace.state_repairs())
    assert [fields for _, fields in records] == [{b"record": b"repair to epoch 1"}]


class GatedCounter(TickCounter):
    """A TickCounter that holds tick ``hold`` in its handler, once, until ``gate`` opens."""

    name = "gated_counter"

    def __init__(self, hold: int) -> None:
        super().__init__()
        self.hold = hold
        self.holding = asyncio.Event()
        self.gate = asyncio.Event()

    @handles
    async def on_tick(self, tick: MarketTick, ctx: HandlerContext) -> None:
        if tick.sequence == self.hold and not self.gate.is_set():
            self.holding.set()
            await self.gate.wait()
        self.last_seq[tick.symbol] = tick.sequence
        self.counts[tick.symbol] = self.counts.get(tick.symbol, 0) + 1


async def test_a_repair_while_the_owner_handles_an_entry_wins_over_that_entrys_commit(
    engine: Engine,
) -> None:
    publisher = engine.publisher(producer="market_data", metrics=RuntimeMetrics())
    actor = GatedCounter(hold=3)
    store = engine.operator_store()
    async with running(engine.runner(actor, fast(batch_size=1, prefetch=False), publisher)):
        for seq in (1, 2, 3):
            await publisher.publish(tick("BTC", seq), partition_key="BTC")
        await asyncio.wait_for(actor.holding.wait(), 10)
        for _ in range(500):  # 1 and 2 are committed; 3 is in the handler
            if (await stored_state(engine, actor.name)).get("counts") == {"BTC": 2}:
                break
            await asyncio.sleep(0.01)
        repaired = {"counts": {"BTC": 100}, "last_seq": {"BTC": 2}, "ooo": 0}
        epoch = await store.store_repaired_state(
            actor.name, 0, 1, json.dumps(repaired).encode(), lambda e: b"epoch %d" % e, 10
        )
        actor.gate.set()  # 3's commit, made from the state before the repair, must not land
        await publisher.publish(tick("BTC", 4), partition_key="BTC")
        for _ in range(1000):
            if (await stored_state(engine, actor.name)).get("counts") == {"BTC": 102}:
                break
            await asyncio.sleep(0.01)
    await publisher.close()

    assert epoch == 1
    assert (await stored_state(engine, actor.name))["counts"] == {"BTC": 102}  # 100 + 3 + 4
    assert await store.state_epoch(actor.name) == 1
    records = await store.range_reverse(engine.keyspace.state_repairs())
    assert [fields for _, fields in records] == [{b"record": b"epoch 1"}]


async def test_a_repair_under_an_owner_committing_all_the_while_is_recorded_once(
    engine: Engine,
) -> None:
    publisher = engine.publisher(producer="market_data", metrics=RuntimeMetrics())
    actor = TickCounter()
    store = engine.operator_store()
    async with running(engine.runner(actor, fast(batch_size=1, prefetch=False), publisher)):
        stored = [
            publisher.publish_nowait(tick("BTC", n), partition_key="BTC") for n in range(1, 301)
        ]
        await asyncio.gather(*stored)
        await wait_until(lambda: actor.counts.get("BTC", 0) >= 20, within_s=30)
        repaired = {"counts": {"BTC": 10_000}, "last_seq": {}, "ooo": 0}
        epoch = await store.store_repaired_state(
            actor.name, 0, 1, json.dumps(repaired).encode(), lambda e: b"epoch %d" % e, 10
        )
        handled_before = actor.counts.get("BTC", 0)
        await wait_until(lambda: actor.last_seq.get("BTC") == 300, within_s=60)
        for _ in range(500):
            if (await stored_state(engine, actor.name))["last_seq"] == {"BTC": 300}:
                break
            await asyncio.sleep(0.01)
    await publisher.close()

    assert epoch == 1
    assert handled_before < 300  # the repair came while the owner was committing
    final = (await stored_state(engine, actor.name))["counts"]["BTC"]
    assert 10_000 < final <= 10_000 + 300  # what came after the repair, counted on from it
    records = await store.range_reverse(engine.keyspace.state_repairs())
    assert [fields for _, fields in records] == [{b"record": b"epoch 1"}]


async def test_deleting_the_namespace_leaves_nothing_to_read(engine: Engine) -> None:
    (letter,) = await dead_letters_of_failing_ticks(engine, [2])
    store = engine.operator_store()
    await store.purge_dead_letters(FlakyTicks.name, [], {"action": "noted"}, 100)
    assert await engine.read("market.tick")
    assert await store.range(engine.keyspace.audit())

    assert await store.delete_namespace() > 0

    assert await engine.read("market.tick") == []
    assert await engine.dead_letters(FlakyTicks.name) == []
    assert await engine.load_state(FlakyTicks.name) is None
    assert await store.range(engine.keyspace.audit()) == []
    assert await store.redriven(FlakyTicks.name, [letter.entry_id]) == [None]
