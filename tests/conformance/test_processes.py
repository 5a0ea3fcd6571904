"""Process-level guarantees on every engine: a worker SIGKILLed at random moments mid-flow,
and a SIGTERM that drains. The worker (``tests.conformance.worker``) runs TickCounter, whose
committed state counts ticks per symbol and order violations: a lost effect leaves a gap in a
symbol's sequence, a doubled one repeats it; both count as violations."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.core.engine import Engine
from runtime.core.metrics import RuntimeMetrics
from runtime.core.publisher import Publisher
from tests.conformance.conftest import TICKS_IN_FOUR
from tests.conformance.harness import Harness
from tests.process.actors import TickCounter, tick
from tests.process.test_process_crashes import Worker as ProcessWorker

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = [f"SYM{i}" for i in range(10)]
SPEC = "market.tick=4"


class Worker(ProcessWorker):
    """The process suite's worker (start waits for "ready"; kill, terminate, stop by PID),
    running ``tests.conformance.worker`` on any engine's URL."""

    def __init__(self, url: str, namespace: str) -> None:
        self.args = [sys.executable, "-m", "tests.conformance.worker", url, namespace, "w1", SPEC]
        self.process = None


@pytest.fixture
def worker(harness: Harness, namespace: str) -> Iterator[Worker]:
    each = Worker(harness.url, namespace)
    yield each
    each.stop()


@pytest.fixture
async def feed(harness: Harness, namespace: str) -> AsyncIterator[Engine]:
    engine = harness.open(namespace, TICKS_IN_FOUR)
    yield engine
    await engine.close()


async def publish_ticks(publisher: Publisher, per_symbol: int, chunk: int, pause_s: float) -> None:
    for start in range(1, per_symbol + 1, chunk):
        await asyncio.gather(
            *(
                publisher.publish(tick(symbol, seq), partition_key=symbol)
                for seq in range(start, min(start + chunk, per_symbol + 1))
                for symbol in SYMBOLS
            )
        )
        await asyncio.sleep(pause_s)


async def read_state(engine: Engine) -> dict[str, object]:
    data = await engine.load_state(TickCounter.name)
    return json.loads(data) if data else {"counts": {}, "last_seq": {}, "ooo": 0}


async def handled(engine: Engine) -> int:
    counts = (await read_state(engine))["counts"]
    assert isinstance(counts, dict)
    return sum(counts.values())


async def wait_for_total(engine: Engine, total: int, within_s: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while (done := await handled(engine)) < total:
        if loop.time() > deadline:
            raise AssertionError(f"only {done} of {total} events were handled")
        await asyncio.sleep(0.05)
    return await read_state(engine)


async def test_sigkill_at_random_moments_every_effect_happens_exactly_once(
    feed: Engine, worker: Worker
) -> None:
    per_symbol = 400  # 4,000 events over 10 symbols in 4 partitions
    publisher = feed.publisher(producer="market_data", metrics=RuntimeMetrics())
    rng = random.Random(4_000)
    await worker.start()
    producer = asyncio.create_task(publish_ticks(publisher, per_symbol, chunk=20, pause_s=0.03))
    kills = 0
    try:
        while not producer.done() or kills < 3:
            await asyncio.sleep(rng.uniform(0.2, 0.8))
            worker.kill()
            kills += 1
            await worker.start()
        await producer
        state = await wait_for_total(feed, 4_000, within_s=60)
    finally:
        await publisher.close()
    assert worker.terminate() == 0

    assert state["ooo"] == 0, "some event's effect was lost or doubled"
    assert state["counts"] == dict.fromkeys(SYMBOLS, per_symbol)
    assert state["last_seq"] == dict.fromkeys(SYMBOLS, per_symbol)
    envelopes = [
        Envelope.FromString(data)
        for _, data in await feed.read("portfolio.pnl.updated", count=100_000)
    ]
    # A redelivered input yields the same output ids, so downstream sees each effect once.
    assert len({e.event_id for e in envelopes}) == 4_000
    assert len({e.causation_id for e in envelopes}) == 4_000
    assert kills >= 3


async def test_sigterm_drains_and_exits_zero_and_a_new_worker_carries_on(
    feed: Engine, worker: Worker
) -> None:
    publisher = feed.publisher(producer="market_data", metrics=RuntimeMetrics())
    await worker.start()
    try:
        producer = asyncio.create_task(publish_ticks(publisher, 200, chunk=20, pause_s=0.1))
        for _ in range(1_000):
            if await handled(feed):
                break
            await asyncio.sleep(0.01)
        assert not producer.done(), "the feed ended before the worker was stopped mid-stream"
        assert worker.terminate() == 0
        drained = await handled(feed)
        await producer
    finally:
        await publisher.close()
    assert 0 < drained < 2_000
    await worker.start()
    state = await wait_for_total(feed, 2_000, within_s=30)
    assert worker.terminate() == 0
    assert state["ooo"] == 0
    assert state["counts"] == dict.fromkeys(SYMBOLS, 200)
