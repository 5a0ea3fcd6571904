"""Logical time on the in-memory broker: deliveries in (event time, append order), one grant
at a time, with the real DeliveryLoop."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from quantum.events.v1.envelope_pb2 import Envelope
from quantum.events.v1.market_pb2 import MarketTick
from quantum.events.v1.portfolio_pb2 import PnlUpdated

from runtime.adapters.memory import MemoryBroker, MemoryBus, MemoryRunner
from runtime.core.actor import Actor, HandlerContext, handles
from runtime.core.delivery import RunnerConfig
from runtime.core.envelope import seal
from runtime.core.metrics import RuntimeMetrics
from tests.integration.bus_support import wait_until
from tests.memory.support import FAST, PNL, TICKS, running

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def tick_at(ms: int, symbol: str = "BTC", sequence: int = 0) -> Envelope:
    return seal(
        MarketTick(symbol=symbol, price="1", sequence=sequence),
        producer="market_data",
        partition_key=symbol,
        occurred_at=at(ms),
    )


class Journal:
    """Who handled what, in the order it happened (shared by several actors)."""

    def __init__(self) -> None:
        self.lines: list[str] = []


class Echo(Actor):
    """Ticks in; a PnlUpdated per tick out (at the tick's event time)."""

    name = "echo"

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    @handles
    def on_tick(self, tick: MarketTick, ctx: HandlerContext) -> None:
        self.journal.lines.append(f"echo tick {tick.sequence}")
        ctx.emit(PnlUpdated(symbol=tick.symbol, realized_pnl=str(tick.sequence)))


class Listener(Actor):
    """Ticks and PnL updates in; records both."""

    name = "listener"

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    @handles
    def on_tick(self, tick: MarketTick, ctx: HandlerContext) -> None:
        self.journal.lines.append(f"listener tick {tick.sequence}")

    @handles
    def on_pnl(self, pnl: PnlUpdated, ctx: HandlerContext) -> None:
        self.journal.lines.append(f"listener pnl {pnl.realized_pnl}")


async def test_every_consequence_of_an_event_is_delivered_before_anything_later() -> None:
    broker = MemoryBroker(logical=True)
    scheduler = broker.scheduler
    assert scheduler is not None
    journal = Journal()
    echo = MemoryRunner(Echo(journal), broker, FAST, metrics=RuntimeMetrics())
    listener = MemoryRunner(Listener(journal), broker, FAST, metrics=RuntimeMetrics())
    for loop in (echo, listener):
        await loop.subscription.open()
    # Ticks 1 and 2 share a millisecond.
    scheduler.feed([tick_at(0, sequence=1), tick_at(0, sequence=2), tick_at(10, sequence=3)])
    async with running(echo), running(listener):
        await wait_until(scheduler.finished.is_set)
    assert journal.lines == [
        # time 0: each tick to each group (by append number, then group name), then the
        # outputs, which were appended after both ticks
        "echo tick 1",
        "listener tick 1",
        "echo tick 2",
        "listener tick 2",
        "listener pnl 1",
        "listener pnl 2",
        # time 10 only after everything of time 0
        "echo tick 3",
        "listener tick 3",
        "listener pnl 3",
    ]
    assert scheduler.idle
    assert scheduler.now == (int(at(10).timestamp()), 10_000_000)


async def test_a_later_source_entry_waits_until_logical_time_reaches_it() -> None:
    broker = MemoryBroker(logical=True)
    scheduler = broker.scheduler
    assert scheduler is not None
    journal = Journal()
    echo = MemoryRunner(Echo(journal), broker, FAST, metrics=RuntimeMetrics())
    await echo.subscription.open()
    scheduler.feed(iter([tick_at(5, sequence=1), tick_at(50, sequence=2)]))
    # The first tick is appended (time has reached it), the second not yet.
    assert broker.length(broker.stream_of(TICKS)) == 1
    async with running(echo):
        await wait_until(scheduler.finished.is_set)
    assert broker.length(broker.stream_of(TICKS)) == 2
    assert journal.lines == ["echo tick 1", "echo tick 2"]
    # Appends, in order, alternate ticks and their outputs: time never went backwards.
    times = [entry.at for _, entry in broker.entries()]
    assert times == sorted(times)
    assert [stream for stream, _ in broker.entries()] == [
        broker.stream_of(TICKS),
        broker.stream_of(PNL),
        broker.stream_of(TICKS),
        broker.stream_of(PNL),
    ]


async def test_published_entries_are_delivered_in_event_time_order_not_append_order() -> None:
    broker = MemoryBroker(logical=True)
    scheduler = broker.scheduler
    assert scheduler is not None
    journal = Journal()
    listener = MemoryRunner(Listener(journal), broker, FAST, metrics=RuntimeMetrics())
    await listener.subscription.open()
    bus = MemoryBus(broker, metrics=RuntimeMetrics())
    # Published together, before the listener runs: the first grant is taken at once.
    await bus.publish_envelopes([tick_at(30, sequence=3), tick_at(10, sequence=1)])
    await bus.publish_envelopes([tick_at(20, sequence=2)])
    async with running(listener):
        await wait_until(lambda: len(journal.lines) == 3)
        await wait_until(lambda: scheduler.idle)
    # The tick of time 30 was granted first (nothing else existed yet); the rest by time.
    assert journal.lines == ["listener tick 3", "listener tick 1", "listener tick 2"]
    await bus.close()


async def test_a_group_created_late_gets_the_backlog_in_time_order() -> None:
    broker = MemoryBroker(logical=True)
    scheduler = broker.scheduler
    assert scheduler is not None
    stream = broker.stream_of(TICKS)
    for ms, seq in ((20, 2), (10, 1)):
        broker.append(stream, tick_at(ms, sequence=seq).SerializeToString(), (0, ms))
    journal = Journal()
    listener = MemoryRunner(Listener(journal), broker, FAST, metrics=RuntimeMetrics())
    async with running(listener):
        await wait_until(lambda: len(journal.lines) == 2)
    assert journal.lines == ["listener tick 1", "listener tick 2"]
    positions = await listener.subscription.positions()
    assert {(p.stream, p.pending, p.lag) for p in positions} == {
        (broker.stream_of(PNL), 0, 0),
        (stream, 0, 0),
    }


async def test_loops_without_prefetch_stop_once_the_scheduler_closes() -> None:
    # A fetch that finds work at once (or a closed scheduler) still yields to the event loop;
    # else a loop without prefetch spins and stop() never gets to run.
    broker = MemoryBroker(logical=True)
    scheduler = broker.scheduler
    assert scheduler is not None
    journal = Journal()
    config = RunnerConfig("c1", block_ms=1_000, prefetch=False)
    loops = [
        MemoryRunner(actor, broker, config, metrics=RuntimeMetrics())
        for actor in (Echo(journal), Listener(journal))
    ]
    for loop in loops:
        await loop.subscription.open()
    scheduler.feed([tick_at(ms, sequence=ms) for ms in range(1, 21)])
    tasks = [asyncio.create_task(loop.run()) for loop in loops]
    await asyncio.wait_for(scheduler.finished.wait(), 10)
    assert len(journal.lines) == 20 * 3
    scheduler.close()
    await asyncio.wait_for(asyncio.gather(*(loop.stop() for loop in loops)), 5)
    await asyncio.gather(*tasks)
