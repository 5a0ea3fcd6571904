"""``python -m bench pipeline``: ticks through all six domains on a private Redis.

- ``ticks_per_s``: N simulated ticks published by market_data in batches while the five
  consuming domains run as in ``quantum run`` (one process, one Redis, a real PolicyStore);
  from the first publish until every consumer group has nothing undelivered or pending.
- ``tick_to_position_p50_ms`` / ``tick_to_position_p99_ms``: at a fixed offered load
  (default 1,000 ticks/s, paced in real time), the time from publishing a tick until a
  position event (opened or closed) caused by it is on its stream, matched by trace id.
- ``baseline_in_process_ticks_per_s``: the same actors and ticks chained in one process with
  ``deliver`` and no Redis at all: the cost of the domain code alone, measured in the same
  run, so the difference is what the bus, the runner and Redis add.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import defaultdict, deque
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.host import Runtime, install_uvloop
from runtime.adapters.redis.runner import RunnerConfig
from runtime.bootstrap import actor_factories, drain
from runtime.core.actor import Actor, deliver
from runtime.core.envelope import decode_envelope
from runtime.core.keys import Keyspace
from runtime.core.logs import configure_logging
from runtime.core.policy.store import PolicyStore
from runtime.core.redis_server import start_redis_server
from runtime.domains.market_data import SimulatedFeed, paced_batches, tick_envelope

SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD")
EQUITY = Decimal(100_000)
POSITION_TYPES = ("portfolio.position.opened", "portfolio.position.closed")


def _progress(message: str) -> None:
    print(f"bench pipeline: {message}", file=sys.stderr, flush=True)


def _feed(rate: float) -> SimulatedFeed:
    return SimulatedFeed.for_symbols(SYMBOLS, seed=7, start=datetime.now(UTC), rate=rate)


async def _system(url: str, namespace: str, state_dir: Path) -> tuple[Any, ...]:
    redis = aioredis.Redis.from_url(url)
    keyspace = Keyspace(namespace)
    store = PolicyStore(redis, keyspace, state_dir=state_dir)
    await store.start()
    factories = actor_factories(store, EQUITY)
    actors = [make() for make in factories.values()]
    # Long streams: a burst of ticks must not be trimmed before a lagging domain reads it.
    bus = EventBus(redis, keyspace, producer="bench", maxlen=1_000_000)
    runtime = Runtime(actors, redis, keyspace, bus, RunnerConfig("bench-0", block_ms=50))
    task = asyncio.create_task(runtime.run())
    return redis, keyspace, store, actors, bus, runtime, task


async def _shutdown(system: tuple[Any, ...]) -> None:
    redis, _, store, _, bus, runtime, task = system
    runtime.stop()
    await task
    await bus.close()
    await store.stop()
    await redis.aclose()


async def _drained(redis: aioredis.Redis, keyspace: Keyspace, actors: list[Actor]) -> None:
    if not await drain(redis, keyspace, actors, timeout_s=600):
        raise TimeoutError("the pipeline did not drain within ten minutes")


async def throughput(url: str, ticks: int, state_dir: Path) -> float:
    system = await _system(url, "bench-throughput", state_dir / "throughput")
    redis, keyspace, _, actors, bus, _, _ = system
    feed = _feed(rate=1000.0)
    envelopes = [tick_envelope(feed.next_tick()) for _ in range(ticks)]
    started = time.perf_counter()
    for start in range(0, ticks, 500):
        await bus.publish_envelopes(envelopes[start : start + 500])
    await _drained(redis, keyspace, actors)
    elapsed = time.perf_counter() - started
    await _shutdown(system)
    return ticks / elapsed


async def latency(url: str, rate: float, seconds: float, state_dir: Path) -> list[float]:
    system = await _system(url, "bench-latency", state_dir / "latency")
    redis, keyspace, _, actors, bus, _, _ = system
    published_at: dict[str, float] = {}
    samples: list[float] = []
    stop = asyncio.Event()

    async def watch_positions() -> None:
        reader = aioredis.Redis.from_url(url)
        streams = {keyspace.stream(name): "$" for name in POSITION_TYPES}
        try:
            while not stop.is_set():
                found = await reader.xread(cast(Any, streams), block=100, count=1000)
                now = time.perf_counter()
                for stream, entries in found or []:
                    for entry_id, fields in entries:
                        streams[stream.decode()] = entry_id.decode()
                        trace_id = decode_envelope(fields[b"envelope"]).trace_id
                        if trace_id in published_at:
                            samples.append((now - published_at[trace_id]) * 1000)
        finally:
            await reader.aclose()

    watcher = asyncio.create_task(watch_positions())
    await asyncio.sleep(0.2)  # the watcher's first XREAD is in place
    feed = _feed(rate=rate)
    total = int(rate * seconds)
    async for batch in paced_batches(feed, speed=1.0, limit=total):
        envelopes = [tick_envelope(tick) for tick in batch]
        now = time.perf_counter()
        for envelope in envelopes:
            published_at[envelope.trace_id] = now
        await bus.publish_envelopes(envelopes)
    await _drained(redis, keyspace, actors)
    await asyncio.sleep(0.3)
    stop.set()
    await watcher
    await _shutdown(system)
    return samples


class _Stub:
    """A PolicyStore stand-in for the in-process baseline: the defaults, never written."""

    def __init__(self, store: PolicyStore) -> None:
        self._policy = store.get_policy()

    def get_policy(self) -> Any:
        return self._policy

    async def switch_mode(self, *_: Any, **__: Any) -> Any:
        return self._policy

    async def set_trading_state(self, *_: Any, **__: Any) -> Any:
        return self._policy


async def in_process_baseline(url: str, ticks: int, state_dir: Path) -> float:
    redis = aioredis.Redis.from_url(url)
    store = PolicyStore(redis, Keyspace("bench-baseline"), state_dir=state_dir / "baseline")
    await store.start()
    stub = _Stub(store)
    await store.stop()
    await redis.aclose()
    actors = [make() for make in actor_factories(cast(Any, stub), EQUITY).values()]
    routes: dict[str, list[Actor]] = defaultdict(list)
    for actor in actors:
        for event_type in actor.consumes():
            routes[event_type.name].append(actor)
    feed = _feed(rate=1000.0)
    envelopes = [tick_envelope(feed.next_tick()) for _ in range(ticks)]
    started = time.perf_counter()
    for first in envelopes:
        queue: deque[Envelope] = deque([first])
        while queue:
            event = queue.popleft()
            for actor in routes[event.event_type]:
                queue.extend(await deliver(actor, event))
    return ticks / (time.perf_counter() - started)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    server = start_redis_server()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as folder:
            state = Path(folder)
            _progress(f"throughput: {args.ticks} ticks through six domains")
            ticks_per_s = await throughput(server.url, args.ticks, state)
            _progress(f"latency: {args.rate:.0f} ticks/s for {args.seconds:.0f} s")
            samples = await latency(server.url, args.rate, args.seconds, state)
            _progress("baseline: the same domains in process, no Redis")
            baseline = await in_process_baseline(server.url, args.ticks, state)
    finally:
        server.stop()
    return {
        "ticks_per_s": round(ticks_per_s),
        "ticks": args.ticks,
        "tick_to_position_p50_ms": round(statistics.median(samples), 3) if samples else None,
        "tick_to_position_p99_ms": round(_percentile(samples, 0.99), 3) if samples else None,
        "position_samples": len(samples),
        "offered_ticks_per_s": args.rate,
        "baseline_in_process_ticks_per_s": round(baseline),
        "targets": {"ticks_per_s": 20_000, "tick_to_position_p99_ms": 10.0},
    }


def run(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench pipeline")
    parser.add_argument("--ticks", type=int, default=20_000, help="ticks for the throughput run")
    parser.add_argument("--rate", type=float, default=1_000.0, help="offered ticks/s for latency")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    install_uvloop()
    return asyncio.run(_main(args))
