"""``python -m bench pipeline``: ticks through all six domains on a private Redis, the
consuming domains spread over two worker processes as ``quantum run --workers 2`` lays them
out (market_data, ai_engine, risk_safety | execution, portfolio, analytics).

The coordinator process plays market_data (it seals and publishes the ticks); two spawned
workers host the other five domains through ``runtime.adapters.redis.host.run_actors``, each
with its own Redis client, PolicyStore and event bus, exactly as ``quantum run --domains``.

- ``ticks_per_s``: N simulated ticks sealed and published in batches of 500; from the first
  publish until every consumer group has nothing undelivered or pending.
- ``cpu_us_per_tick``: CPU of every process over that run (coordinator, both workers, and
  redis-server from INFO CPU), per tick; ``cpu_us_per_tick_by_process`` splits it.
- ``inprocess_cpu_us_per_tick``: the same domains and ticks chained in one process with
  ``deliver`` and no transport at all (sealing the ticks included): the cost of the domain
  code alone, measured in the same run. (When the in-memory transport lands, it replaces
  this loop.)
- ``tick_to_position_p50_ms`` / ``_p99_ms``: at a fixed offered load (default 1,000 ticks/s,
  paced in real time), the time from publishing a tick until a position event (opened or
  closed) caused by it is on its stream, matched by trace id; run until ``--min-samples``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
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
from redis.exceptions import ResponseError

from bench import _pyspy
from bench._common import (
    load_average_1m,
    percentile,
    process_cpu_s,
    repeated,
)
from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.host import install_uvloop, run_actors
from runtime.adapters.redis.operator_store import RedisOperatorStore
from runtime.adapters.redis.policy_store import PolicyStore
from runtime.adapters.redis.runner import RunnerConfig
from runtime.bootstrap import actor_factories
from runtime.core.actor import Actor, deliver
from runtime.core.envelope import decode_envelope
from runtime.core.keys import Keyspace
from runtime.core.logs import configure_logging
from runtime.core.redis_server import start_redis_server
from runtime.domains.market_data import SimulatedFeed, paced_batches, tick_envelope
from runtime.drain import drain, groups_of

SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD")
EQUITY = Decimal(100_000)
POSITION_TYPES = ("portfolio.position.opened", "portfolio.position.closed")
# quantum run --workers 2: market_data (here: the coordinator) with the first group.
WORKERS = (("ai_engine", "risk_safety"), ("execution", "portfolio", "analytics"))
PUBLISH_BATCH = 500


def _progress(message: str) -> None:
    print(f"bench pipeline: {message}", file=sys.stderr, flush=True)


def _feed(rate: float) -> SimulatedFeed:
    return SimulatedFeed.for_symbols(SYMBOLS, seed=7, start=datetime.now(UTC), rate=rate)


# -- the worker processes --------------------------------------------------------------------


def _worker(url: str, namespace: str, domains: tuple[str, ...], index: int, state: str) -> None:
    """Host ``domains`` until SIGTERM, as ``quantum run --domains ... --no-control-plane``."""
    configure_logging("WARNING")
    install_uvloop()

    async def main() -> int:
        redis = aioredis.Redis.from_url(url)
        keyspace = Keyspace(namespace)
        store = PolicyStore(redis, keyspace, state_dir=Path(state) / f"worker-{index}")
        await store.start()
        factories = actor_factories(store, EQUITY)
        actors = [factories[name]() for name in domains]
        bus = EventBus(redis, keyspace, producer="runtime", maxlen=1_000_000)
        config = RunnerConfig(f"bench-{index}", block_ms=50)
        try:
            return await run_actors(actors, redis, keyspace, bus, config)
        finally:
            await store.stop()
            await redis.aclose()

    raise SystemExit(asyncio.run(main()))


class Pipeline:
    """The two workers on one namespace, and the coordinator's view of them."""

    def __init__(self, url: str, namespace: str, state_dir: Path) -> None:
        self.url = url
        self.namespace = namespace
        self.state_dir = state_dir
        self.redis = aioredis.Redis.from_url(url)
        self.keyspace = Keyspace(namespace)
        self.store = PolicyStore(self.redis, self.keyspace, state_dir=state_dir / "coordinator")
        self.bus = EventBus(self.redis, self.keyspace, producer="market_data", maxlen=1_000_000)
        self.processes: list[Any] = []
        self.actors: list[Actor] = []

    async def start(self) -> None:
        await self.store.start()
        factories = actor_factories(self.store, EQUITY)
        self.actors = [factories[name]() for group in WORKERS for name in group]
        ctx = mp.get_context("spawn")
        for index, domains in enumerate(WORKERS):
            process = ctx.Process(
                target=_worker,
                args=(self.url, self.namespace, domains, index, str(self.state_dir)),
            )
            process.start()
            self.processes.append(process)
        await self._groups_ready()

    async def _groups_ready(self, timeout_s: float = 120.0) -> None:
        """Wait until every hosted domain's consumer group exists on its streams."""
        wanted = {
            (self.keyspace.stream(t.name), self.keyspace.group(actor.name))
            for actor in self.actors
            for t in actor.consumes()
        }
        deadline = time.monotonic() + timeout_s
        while wanted:
            for stream, group in list(wanted):
                try:
                    names = {_text(g["name"]) for g in await self.redis.xinfo_groups(stream)}
                except ResponseError:  # no stream yet
                    names = set()
                if group in names:
                    wanted.discard((stream, group))
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers did not create their groups: {sorted(wanted)}")
            await asyncio.sleep(0.05)

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds so far of each worker (by pid), the coordinator and redis-server."""
        figures = {f"worker_{i}": process_cpu_s(p.pid) for i, p in enumerate(self.processes)}
        figures["coordinator"] = time.process_time()
        return figures

    async def redis_cpu_s(self) -> float:
        info = await self.redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    async def drained(self) -> None:
        owned = groups_of(self.keyspace, self.actors)
        if not await drain(RedisOperatorStore(self.redis, self.keyspace), owned, timeout_s=600):
            raise TimeoutError("the pipeline did not drain within ten minutes")

    async def stop(self) -> None:
        for process in self.processes:
            process.terminate()  # SIGTERM: the worker drains and exits
        for process in self.processes:
            await asyncio.to_thread(process.join, 30)
            if process.is_alive():
                process.kill()
        failed = [p.exitcode for p in self.processes if p.exitcode not in (0, -15)]
        await self.bus.close()
        await self.store.stop()
        await self.redis.aclose()
        if failed:
            raise RuntimeError(f"a worker exited with {failed}: see its log on standard error")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _cpu_sample(pipeline: Pipeline) -> dict[str, float]:
    return {**pipeline.cpu_s(), "redis": await pipeline.redis_cpu_s()}


def _per_tick(before: dict[str, float], after: dict[str, float], ticks: int) -> dict[str, float]:
    per = {name: (after[name] - before[name]) / ticks * 1e6 for name in before}
    per["total"] = sum(per.values())
    return {name: round(value, 1) for name, value in per.items()}


async def _spy_on(
    pipeline: Pipeline, profile: Path | None, phase: str
) -> list[subprocess.Popen[bytes]]:
    """py-spy on every process of the pipeline, into ``profile/<phase>-<process>.txt``."""
    if profile is None:
        return []
    await asyncio.to_thread(profile.mkdir, parents=True, exist_ok=True)
    pids = {f"worker_{i}": p.pid for i, p in enumerate(pipeline.processes)}
    pids["coordinator"] = os.getpid()
    spies = [_pyspy.attach(pid, profile / f"{phase}-{name}.txt") for name, pid in pids.items()]
    await asyncio.sleep(1.0)  # py-spy attached before the first tick
    return spies


async def _stop_spies(spies: list[subprocess.Popen[bytes]]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file and exits
        await asyncio.to_thread(spy.wait, 30)


async def throughput(
    url: str, ticks: int, state_dir: Path, profile: Path | None = None
) -> dict[str, Any]:
    pipeline = Pipeline(url, f"bench-throughput-{time.monotonic_ns()}", state_dir / "tp")
    await pipeline.start()
    spies: list[subprocess.Popen[bytes]] = []
    try:
        spies = await _spy_on(pipeline, profile, "throughput")
        feed = _feed(rate=1000.0)
        before = await _cpu_sample(pipeline)
        started = time.perf_counter()
        for start in range(0, ticks, PUBLISH_BATCH):
            count = min(PUBLISH_BATCH, ticks - start)
            await pipeline.bus.publish_envelopes(
                [tick_envelope(feed.next_tick()) for _ in range(count)]
            )
        await pipeline.drained()
        elapsed = time.perf_counter() - started
        after = await _cpu_sample(pipeline)
    finally:
        await _stop_spies(spies)
        await pipeline.stop()
    by_process = _per_tick(before, after, ticks)
    return {
        "ticks_per_s": ticks / elapsed,
        "cpu_us_per_tick": by_process["total"],
        "by_process": by_process,
    }


async def latency(
    url: str,
    rate: float,
    seconds: float,
    min_samples: int,
    state_dir: Path,
    profile: Path | None = None,
) -> dict[str, Any]:
    pipeline = Pipeline(url, f"bench-latency-{time.monotonic_ns()}", state_dir / "lat")
    await pipeline.start()
    published_at: dict[str, float] = {}
    samples: list[float] = []
    stop = asyncio.Event()
    keyspace = pipeline.keyspace

    async def watch_positions() -> None:
        reader = aioredis.Redis.from_url(url)
        streams = {keyspace.stream(name): "$" for name in POSITION_TYPES}
        try:
            while not stop.is_set():
                found: Any = await reader.xread(cast(Any, streams), block=100, count=1000)
                now = time.perf_counter()
                for stream, entries in found or []:
                    for entry_id, fields in entries:
                        streams[stream.decode()] = entry_id.decode()
                        trace_id = decode_envelope(fields[b"envelope"]).trace_id
                        if trace_id in published_at:
                            samples.append((now - published_at[trace_id]) * 1000)
        finally:
            await reader.aclose()

    spies: list[subprocess.Popen[bytes]] = []
    try:
        spies = await _spy_on(pipeline, profile, "latency")
        watcher = asyncio.create_task(watch_positions())
        await asyncio.sleep(0.2)  # the watcher's first XREAD is in place
        feed = _feed(rate=rate)
        began = time.monotonic()
        published = 0
        before = await _cpu_sample(pipeline)
        while time.monotonic() - began < seconds or len(samples) < min_samples:
            if time.monotonic() - began > max(20 * seconds, 600.0):
                break  # far too few positions: report what there is
            async for batch in paced_batches(feed, speed=1.0, limit=int(rate)):
                envelopes = [tick_envelope(tick) for tick in batch]
                now = time.perf_counter()
                for envelope in envelopes:
                    published_at[envelope.trace_id] = now
                await pipeline.bus.publish_envelopes(envelopes)
                published += len(envelopes)
        await pipeline.drained()
        after = await _cpu_sample(pipeline)
        await asyncio.sleep(0.3)
        stop.set()
        await watcher
    finally:
        await _stop_spies(spies)
        await pipeline.stop()
    return {
        "samples": samples,
        "ticks": published,
        "seconds": time.monotonic() - began,
        "by_process": _per_tick(before, after, published),
    }


class _Stub:
    """A PolicyStore stand-in for the in-process run: the defaults, never written."""

    def __init__(self, policy: Any) -> None:
        self._policy = policy

    def get_policy(self) -> Any:
        return self._policy

    async def switch_mode(self, *_: Any, **__: Any) -> Any:
        return self._policy

    async def set_trading_state(self, *_: Any, **__: Any) -> Any:
        return self._policy


async def in_process(url: str, ticks: int, state_dir: Path) -> dict[str, float]:
    redis = aioredis.Redis.from_url(url)
    store = PolicyStore(redis, Keyspace("bench-inprocess"), state_dir=state_dir / "inprocess")
    await store.start()
    stub = _Stub(store.get_policy())
    await store.stop()
    await redis.aclose()
    factories = actor_factories(cast(Any, stub), EQUITY)
    actors = [factories[name]() for group in WORKERS for name in group]
    routes: dict[str, list[Actor]] = defaultdict(list)
    for actor in actors:
        for event_type in actor.consumes():
            routes[event_type.name].append(actor)
    feed = _feed(rate=1000.0)
    cpu = time.process_time()
    started = time.perf_counter()
    for _ in range(ticks):
        queue: deque[Envelope] = deque([tick_envelope(feed.next_tick())])
        while queue:
            event = queue.popleft()
            for actor in routes[event.event_type]:
                queue.extend(await deliver(actor, event))
    elapsed = time.perf_counter() - started
    return {
        "ticks_per_s": ticks / elapsed,
        "cpu_us_per_tick": (time.process_time() - cpu) / ticks * 1e6,
    }


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    server = start_redis_server()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as folder:
            state = Path(folder)
            _progress(f"throughput: {args.ticks} ticks through six domains on 2 workers")
            tp = await throughput(server.url, args.ticks, state, args.profile)
            _progress(f"{tp['ticks_per_s']:,.0f} ticks/s, {tp['cpu_us_per_tick']} µs/tick")
            _progress(f"latency: {args.rate:.0f} ticks/s, >= {args.min_samples} positions")
            lat = await latency(
                server.url, args.rate, args.seconds, args.min_samples, state, args.profile
            )
            _progress("in process: the same domains chained, no transport")
            base = await in_process(server.url, args.ticks, state)
    finally:
        server.stop()
    samples = lat["samples"]
    return {
        "ticks_per_s": round(tp["ticks_per_s"]),
        "cpu_us_per_tick": tp["cpu_us_per_tick"],
        "cpu_us_per_tick_by_process": tp["by_process"],
        "inprocess_cpu_us_per_tick": round(base["cpu_us_per_tick"], 1),
        "inprocess_ticks_per_s": round(base["ticks_per_s"]),
        "cpu_ratio_to_inprocess": round(tp["cpu_us_per_tick"] / base["cpu_us_per_tick"], 3),
        "tick_to_position_p50_ms": round(statistics.median(samples), 3) if samples else None,
        "tick_to_position_p99_ms": round(percentile(samples, 0.99), 3) if samples else None,
        "position_samples": len(samples),
        "latency_ticks": lat["ticks"],
        "latency_cpu_us_per_tick_by_process": lat["by_process"],
        "load_average_1m": load_average_1m(),
    }


def run(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench pipeline")
    parser.add_argument("--ticks", type=int, default=20_000, help="ticks for the throughput run")
    parser.add_argument("--rate", type=float, default=1_000.0, help="offered ticks/s for latency")
    parser.add_argument("--seconds", type=float, default=10.0, help="least length of latency run")
    parser.add_argument("--min-samples", type=int, default=1_000, help="least position samples")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the median is reported")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy profiles of every process of the throughput and latency runs into DIR",
    )
    args = parser.parse_args(argv)
    if args.ticks < 1 or args.rate <= 0 or args.seconds <= 0 or args.min_samples < 0:
        parser.error("--ticks, --rate and --seconds must be positive, --min-samples not negative")
    configure_logging("WARNING")
    install_uvloop()
    before = load_average_1m()
    result = repeated(args.repeat, lambda: asyncio.run(_measure(args)))
    result.update(
        ticks=args.ticks,
        offered_ticks_per_s=args.rate,
        workers=[list(group) for group in WORKERS],
        cpus=os.cpu_count(),
        load_average_1m_before=before,
        load_average_1m=load_average_1m(),
        targets={
            "ticks_per_s": 20_000,
            "cpu_us_per_tick_over_inprocess": 1.5,
            "tick_to_position_p99_ms": 10.0,
        },
    )
    return result
