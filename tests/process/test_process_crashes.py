"""Process-level guarantees: a worker killed with SIGKILL mid-flow, and a clean SIGTERM drain.

The worker runs TickCounter, whose state (count and last sequence per symbol, order
violations) is snapshotted with each acknowledgement. If an event's effect were lost, a
sequence would have a gap; if doubled, a sequence would repeat: both count as violations.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.adapters.redis.bus import ENVELOPE_FIELD, EventBus
from runtime.adapters.redis.runner import group_name, state_key
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from runtime.core.redis_server import RedisServer
from tests.process.actors import TickCounter, tick

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = [f"SYM{i}" for i in range(10)]


class Worker:
    """One worker subprocess at a time; ``start`` waits until it is consuming."""

    def __init__(self, url: str, keyspace: Keyspace, consumer: str = "worker-1") -> None:
        self.args = [
            sys.executable,
            "-m",
            "tests.process.worker",
            url,
            keyspace.namespace,
            consumer,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        self.process = subprocess.Popen(
            self.args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )

    async def start(self) -> None:
        self.spawn()
        assert self.process is not None
        assert self.process.stdout is not None
        line = await asyncio.to_thread(self.process.stdout.readline)
        assert line.strip() == b"ready", f"worker did not start: {line!r}"

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def worker(redis_server_url: str, keyspace: Keyspace) -> Iterator[Worker]:
    each = Worker(redis_server_url, keyspace)
    yield each
    each.stop()


async def read_state(redis: aioredis.Redis, keyspace: Keyspace) -> dict[str, object]:
    data = await redis.get(state_key(keyspace, TickCounter.name))
    return json.loads(data) if data else {"counts": {}, "last_seq": {}, "ooo": 0}


async def wait_for_total(
    redis: aioredis.Redis, keyspace: Keyspace, total: int, within_s: float
) -> dict[str, object]:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        state = await read_state(redis, keyspace)
        counts = state["counts"]
        assert isinstance(counts, dict)
        if sum(counts.values()) >= total:
            return state
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"only {sum(counts.values())} of {total} events were handled")
        await asyncio.sleep(0.05)


async def publish_ticks(bus: EventBus, per_symbol: int, chunk: int, pause_s: float) -> None:
    for start in range(1, per_symbol + 1, chunk):
        batch = []
        for seq in range(start, min(start + chunk, per_symbol + 1)):
            for symbol in SYMBOLS:
                batch.append(bus.publish(tick(symbol, seq), partition_key=symbol))
        await asyncio.gather(*batch)
        await asyncio.sleep(pause_s)


async def wait_for_handled(aredis: aioredis.Redis, keyspace: Keyspace) -> None:
    """Until the worker's committed state shows at least one handled tick."""
    for _ in range(1_000):
        state = await read_state(aredis, keyspace)
        if state and sum(state["counts"].values()):  # type: ignore[union-attr]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the worker handled nothing within 10 s")


async def test_sigkill_at_random_moments_every_effect_happens_exactly_once(
    aredis: aioredis.Redis, keyspace: Keyspace, worker: Worker
) -> None:
    per_symbol = 2_000  # 20,000 events over 10 symbols
    bus = EventBus(
        aredis, keyspace, producer="market_data", maxlen=1_000_000, metrics=RuntimeMetrics()
    )
    rng = random.Random(20_000)
    await worker.start()
    producer = asyncio.create_task(publish_ticks(bus, per_symbol, chunk=40, pause_s=0.02))
    kills = 0
    try:
        while not producer.done() or kills < 4:
            await asyncio.sleep(rng.uniform(0.2, 0.9))
            worker.kill()
            kills += 1
            await worker.start()
        await producer
        state = await wait_for_total(aredis, keyspace, 20_000, within_s=60)
    finally:
        await bus.close()
    assert worker.terminate() == 0

    assert state["ooo"] == 0, "some event's effect was lost or doubled"
    assert state["counts"] == dict.fromkeys(SYMBOLS, per_symbol)
    assert state["last_seq"] == dict.fromkeys(SYMBOLS, per_symbol)
    group = group_name(keyspace, TickCounter.name)
    assert (await aredis.xpending(keyspace.stream("market.tick"), group))["pending"] == 0
    outputs = await aredis.xrange(keyspace.stream("portfolio.pnl.updated"))
    envelopes = [Envelope.FromString(f[ENVELOPE_FIELD]) for _, f in outputs]
    # A redelivered input yields the same output ids, so downstream sees each effect once.
    assert len({e.event_id for e in envelopes}) == 20_000
    assert len({e.causation_id for e in envelopes}) == 20_000
    assert kills >= 4


async def test_sigterm_drains_acknowledges_and_exits_zero(
    aredis: aioredis.Redis, keyspace: Keyspace, worker: Worker
) -> None:
    bus = EventBus(
        aredis, keyspace, producer="market_data", maxlen=1_000_000, metrics=RuntimeMetrics()
    )
    await worker.start()
    try:
        # About a second of publishing; the worker is stopped as soon as it has handled some.
        producer = asyncio.create_task(publish_ticks(bus, 300, chunk=30, pause_s=0.1))
        await wait_for_handled(aredis, keyspace)
        assert not producer.done(), "the feed ended before the worker was stopped mid-stream"
        assert worker.terminate() == 0
        await producer
    finally:
        await bus.close()

    group = group_name(keyspace, TickCounter.name)
    stream = keyspace.stream("market.tick")
    assert (await aredis.xpending(stream, group))["pending"] == 0, "the drain left work unacked"
    state = await read_state(aredis, keyspace)
    handled = sum(state["counts"].values())  # type: ignore[union-attr]
    assert 0 < handled < 3_000
    await worker.start()
    state = await wait_for_total(aredis, keyspace, 3_000, within_s=30)
    assert worker.terminate() == 0
    assert state["ooo"] == 0


async def test_redis_restarted_under_a_worker_process_the_flow_resumes_by_itself(
    private_redis: RedisServer,
) -> None:
    keyspace = Keyspace("restart")
    client = aioredis.Redis.from_url(private_redis.url, socket_connect_timeout=0.5)
    bus = EventBus(client, keyspace, maxlen=1_000_000, metrics=RuntimeMetrics())
    worker = Worker(private_redis.url, keyspace)
    try:
        await worker.start()
        producer = asyncio.create_task(publish_ticks(bus, 400, chunk=20, pause_s=0.02))
        await asyncio.sleep(0.3)
        private_redis.kill()
        await asyncio.sleep(0.5)
        private_redis.restart()
        await asyncio.wait_for(producer, 30)
        state = await wait_for_total(client, keyspace, 4_000, within_s=30)
        assert worker.terminate() == 0
    finally:
        worker.stop()
        await bus.close()
        await client.aclose()
    assert state["ooo"] == 0
    assert state["counts"] == dict.fromkeys(SYMBOLS, 400)
