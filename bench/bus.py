"""``python -m bench bus``: the event bus and the delivery loop, end to end, against a bare
redis-py loop measured in the same run.

Measurements, each with its own producer and consumer processes (as in production, so the
figures include the contention for the machine's cores with Redis itself):

- baseline: the producer XADDs 200-byte payloads in pipelines of 1,000; the consumer reads
  them with XREADGROUP COUNT 1000 and acknowledges each read with one XACK — no envelope, no
  handler, no guarantee. What Redis and redis-py allow on this machine.
- the runtime, once per producer API: ``publish_many`` (batches of 1,000: the batch-first
  API, the headline ``events_per_s``), ``publish_nowait`` (a future per event, no
  coroutine) and plain concurrent ``publish`` calls. The consumer runs a ``DomainRunner``
  with a one-handler domain; from the go signal to the last acknowledgement (outputs,
  acknowledgements and processed marks committed).
- latency: ``publish_nowait`` on a 1 ms schedule at a fixed offered load (default 10,000
  events/s); the handler measures the time since the envelope was sealed.

CPU per event is reported per process (producer, consumer, redis-server from INFO CPU) and
in total: on a shared machine it is the figure to trust; wall-clock rates swing with load.
``--engine`` names the transport the runtime runs on (``redis``, ``redis_cluster``: a private
3-master cluster, ``jetstream``: a private nats-server), each started for the run; the
baseline is always the redis-py loop on a private single redis-server, measured in the same
run. ``--repeat N`` reports the median of N runs and every run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantum.events.v1.market_pb2 import MarketTick

from bench._baseline import CHUNK, PAYLOAD_BYTES, measure_baseline
from bench._common import load_average_1m, percentile, repeated
from bench._pair import measure_pair, ready_and_go
from runtime.core.actor import Actor, HandlerContext, handles
from runtime.core.delivery import RunnerConfig
from runtime.core.host import install_uvloop
from runtime.core.keys import Keyspace
from runtime.core.logs import configure_logging
from runtime.core.metrics import RuntimeMetrics
from runtime.core.publisher import Publisher
from runtime.core.redis_server import start_redis_server
from runtime.engines import EngineSettings, open_engine

IN_FLIGHT = 4  # producer batches awaiting Redis at a time
PRODUCER_APIS = ("publish_many", "publish_nowait", "publish")


def payload_tick(sequence: int = 1) -> MarketTick:
    """A MarketTick whose serialized payload is PAYLOAD_BYTES long."""
    tick = MarketTick(symbol="BTCUSDT", price="64123.50", bid="64123.25", ask="64123.75")
    tick.volume = "1.2500"
    tick.sequence = sequence
    base = len(tick.SerializeToString())
    tick.source = "x" * max(0, PAYLOAD_BYTES - base - 3)
    while len(tick.SerializeToString()) > PAYLOAD_BYTES:
        tick.source = tick.source[:-1]
    return tick


class BenchSink(Actor):
    """The one domain of the benchmark: counts, and measures latency when asked to."""

    name = "bench_sink"

    def __init__(self, target: int, measure: bool = False) -> None:
        self.count = 0
        self.target = target
        self.reached = asyncio.Event()
        self.measure = measure
        self.latencies: list[float] = []

    @handles
    def on_tick(self, tick: MarketTick, ctx: HandlerContext) -> None:
        self.count += 1
        if self.count == self.target:
            self.reached.set()
        if self.measure:
            sealed = ctx.envelope.occurred_at
            self.latencies.append(time.time() - (sealed.seconds + sealed.nanos / 1e9))


# -- the runtime -----------------------------------------------------------------------------


def _runtime_producer(
    url: str, namespace: str, events: int, api: str, rate: int, ready: Any, go: Any, result: Any
) -> None:
    """Publish ``events`` ticks through ``api``: as fast as it goes, or at ``rate`` per second
    with ``publish_nowait`` on a 1 ms schedule."""
    install_uvloop()

    async def main() -> None:
        engine = open_engine(url, Keyspace(namespace), settings=EngineSettings(maxlen=2_000_000))
        bus = engine.publisher(producer="market_data", metrics=RuntimeMetrics())
        tick = payload_tick()
        await bus.publish_many([tick])  # connected, caches warm: not counted
        gc_clock = await ready_and_go(ready, go)
        cpu = time.process_time()
        if rate > 0:
            await _paced(bus, tick, events - 1, rate)
        else:
            await _as_fast_as_possible(bus, tick, events - 1, api)
        result.put(("producer", time.time(), time.process_time() - cpu, [], gc_clock.stop()))
        await bus.close()
        await engine.close()

    asyncio.run(main())


async def _as_fast_as_possible(bus: Publisher, tick: MarketTick, events: int, api: str) -> None:
    """Chunks of CHUNK events, up to IN_FLIGHT chunks awaiting Redis at a time."""
    in_flight: set[asyncio.Future[Any]] = set()
    for start in range(0, events, CHUNK):
        if len(in_flight) >= IN_FLIGHT:
            _, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        n = min(CHUNK, events - start)
        chunk: asyncio.Future[Any]
        if api == "publish_many":
            chunk = asyncio.ensure_future(bus.publish_many([tick] * n, partition_key="BTCUSDT"))
        elif api == "publish_nowait":
            futures = [bus.publish_nowait(tick, partition_key="BTCUSDT") for _ in range(n)]
            chunk = asyncio.gather(*futures)
        else:
            chunk = asyncio.gather(*(bus.publish(tick, partition_key="BTCUSDT") for _ in range(n)))
        in_flight.add(chunk)
    await asyncio.gather(*in_flight)


async def _paced(bus: Publisher, tick: MarketTick, events: int, rate: int) -> None:
    began = time.perf_counter()
    sent = 0
    futures: list[asyncio.Future[list[str]]] = []
    while sent < events:
        due = min(events, int((time.perf_counter() - began) * rate) + 1)
        futures += [bus.publish_nowait(tick, partition_key="BTCUSDT") for _ in range(due - sent)]
        sent = due
        await asyncio.sleep(0.001)
    await asyncio.gather(*futures)


def _runtime_consumer(
    url: str, namespace: str, events: int, measure: bool, ready: Any, go: Any, result: Any
) -> None:
    configure_logging("WARNING")
    install_uvloop()

    async def main() -> None:
        engine = open_engine(url, Keyspace(namespace), settings=EngineSettings(maxlen=2_000_000))
        metrics = RuntimeMetrics()
        bus = engine.publisher(producer=BenchSink.name, metrics=metrics)
        actor = BenchSink(events, measure=measure)
        runner = engine.runner(
            actor,
            RunnerConfig(consumer_name="bench", batch_size=CHUNK, block_ms=100),
            bus,
            metrics=metrics,
        )
        await runner.subscription.open()  # its groups exist before the first event
        task = asyncio.create_task(runner.run())
        gc_clock = await ready_and_go(ready, go)
        cpu = time.process_time()
        await actor.reached.wait()  # all handled; now wait for the last acknowledgement
        while metrics.consumed.value(BenchSink.name, "market.tick") < events:  # noqa: ASYNC110
            await asyncio.sleep(0.0002)
        finished = time.time()
        cpu = time.process_time() - cpu
        gc_s = gc_clock.stop()
        await runner.stop()
        await task
        await bus.close()
        await engine.close()
        result.put(("consumer", finished, cpu, actor.latencies, gc_s))

    asyncio.run(main())


def measure_runtime(
    url: str,
    events: int,
    api: str,
    rate: int = 0,
    profile: Path | None = None,
    broker_pids: list[int] | None = None,
) -> dict[str, Any]:
    namespace = f"bench-{os.getpid()}-{api}-{rate}-{time.monotonic_ns()}"
    return measure_pair(
        url,
        events,
        _runtime_producer,
        (url, namespace, events, api, rate),
        _runtime_consumer,
        (url, namespace, events, rate > 0),
        profile,
        broker_pids,
    )


def _progress(message: str) -> None:
    print(f"bench bus: {message}", file=sys.stderr, flush=True)


def measure_redis(args: argparse.Namespace) -> dict[str, Any]:
    """One run of every measurement on a private redis-server (over TCP on loopback, or over
    a unix socket with ``--unix-socket``)."""
    with tempfile.TemporaryDirectory(prefix="bench-bus-") as folder:
        socket = f"{folder}/redis.sock"
        extra = ("--unixsocket", socket, "--unixsocketperm", "700") if args.unix_socket else ()
        server = start_redis_server(extra_args=extra)
        try:
            return _measure_all(f"unix://{socket}" if args.unix_socket else server.url, args)
        finally:
            server.stop()


def measure_redis_cluster(args: argparse.Namespace) -> dict[str, Any]:
    """The runtime on a private 3-master Redis Cluster (``redis+cluster://``; CPU of the
    three redis-servers together), the baseline on a private single redis-server."""
    from tests.conformance.harness_cluster import RedisClusterHarness

    base = start_redis_server()
    cluster = RedisClusterHarness()
    try:
        pids = [server.process.pid for server in cluster.servers]
        result = _measure_all(base.url, args, engine_url=cluster.url, broker_pids=pids)
        return {**result, "broker": "3 redis-servers (cpu_us_per_event.redis is their sum)"}
    finally:
        cluster.stop()
        base.stop()


def measure_jetstream(args: argparse.Namespace) -> dict[str, Any]:
    """The runtime on a private nats-server with JetStream (``nats://``; its CPU), the
    baseline on a private single redis-server."""
    from tests.conformance.harness_jetstream import JetStreamHarness

    base = start_redis_server()
    nats = JetStreamHarness()
    try:
        assert nats.process is not None
        result = _measure_all(base.url, args, engine_url=nats.url, broker_pids=[nats.process.pid])
        return {**result, "broker": "nats-server (cpu_us_per_event.redis is its CPU)"}
    finally:
        nats.stop()
        base.stop()


def _measure_all(
    url: str,
    args: argparse.Namespace,
    *,
    engine_url: str | None = None,
    broker_pids: list[int] | None = None,
) -> dict[str, Any]:
    """The baseline on the Redis at ``url``; the runtime on ``engine_url`` (that Redis when
    None), whose broker CPU comes from ``broker_pids`` when given."""
    runtime_url = engine_url or url
    base = measure_baseline(url, args.events, _profile_path(args, "baseline"))
    _progress(f"baseline {base['events_per_s']:,.0f} events/s")
    result: dict[str, Any] = {
        "baseline_events_per_s": round(base["events_per_s"]),
        "baseline_cpu_us_per_event": base["cpu_us_per_event"],
        "baseline_redis_commands_per_event": base["redis_commands_per_event"],
        "baseline_gc_us_per_event": base["gc_us_per_event"],
    }
    by_api: dict[str, Any] = {}
    for api in args.apis:
        ours = measure_runtime(
            runtime_url,
            args.events,
            api,
            profile=_profile_path(args, api),
            broker_pids=broker_pids,
        )
        _progress(f"{api} {ours['events_per_s']:,.0f} events/s")
        by_api[api] = {
            "events_per_s": round(ours["events_per_s"]),
            "published_per_s": round(ours["published_per_s"]),
            "cpu_us_per_event": ours["cpu_us_per_event"],
            "redis_commands_per_event": ours["redis_commands_per_event"],
            "gc_us_per_event": ours["gc_us_per_event"],
        }
    headline = by_api[args.apis[0]]
    result["events_per_s"] = headline["events_per_s"]
    result["cpu_us_per_event"] = headline["cpu_us_per_event"]
    result["producer_api"] = args.apis[0]
    result["by_producer_api"] = by_api
    result["ratio_to_baseline"] = round(headline["events_per_s"] / base["events_per_s"], 3)
    result["cpu_ratio_to_baseline"] = round(
        headline["cpu_us_per_event"]["total"] / base["cpu_us_per_event"]["total"], 3
    )
    latency_events = max(2, int(args.rate * args.latency_seconds))
    paced = measure_runtime(
        runtime_url,
        latency_events,
        "publish_nowait",
        rate=args.rate,
        profile=_profile_path(args, "paced"),
        broker_pids=broker_pids,
    )
    # The first second warms up connections and caches: left out when there is more.
    steady = paced["latencies"][args.rate :] or paced["latencies"]
    result.update(
        p50_ms=round(statistics.median(steady) * 1000, 3),
        p99_ms=round(percentile(steady, 0.99) * 1000, 3),
        max_ms=round(max(steady) * 1000, 3),
        offered_load_per_s=args.rate,
        latency_samples=len(steady),
        latency_cpu_us_per_event=paced["cpu_us_per_event"],
        load_average_1m=load_average_1m(),
    )
    return result


def _profile_path(args: argparse.Namespace, label: str) -> Path | None:
    """Where py-spy writes the profiles of one measurement (``--profile DIR``), if asked."""
    if args.profile is None:
        return None
    folder: Path = args.profile
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"run{args.run_index}-{label}"


ENGINES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "redis": measure_redis,
    "redis_cluster": measure_redis_cluster,
    "jetstream": measure_jetstream,
}


def run(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench bus")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="redis")
    parser.add_argument("--events", type=int, default=200_000, help="events per throughput run")
    parser.add_argument("--rate", type=int, default=10_000, help="offered events/s for latency")
    parser.add_argument("--latency-seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=1, help="runs; the median is reported")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy profiles of producer and consumer into DIR (read: python -m bench._pyspy)",
    )
    parser.add_argument(
        "--unix-socket",
        action="store_true",
        help="every process talks to redis-server over a unix socket instead of TCP loopback",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="publish_many only and a 0.5 s latency run (a smoke run: the JSON shape, not speed)",
    )
    args = parser.parse_args(argv)
    if args.events < CHUNK or args.rate < 1 or args.latency_seconds <= 0:
        parser.error(
            f"--events must be at least {CHUNK}, --rate and --latency-seconds positive; got "
            f"{args.events}, {args.rate}, {args.latency_seconds}"
        )
    args.apis = PRODUCER_APIS[:1] if args.quick else PRODUCER_APIS
    if args.quick:
        args.latency_seconds = min(args.latency_seconds, 0.5)
    before = load_average_1m()
    args.run_index = -1

    def once() -> dict[str, Any]:
        args.run_index += 1
        return ENGINES[args.engine](args)

    result = repeated(args.repeat, once)
    result.update(
        engine=args.engine,
        gc_tuning="runtime.core.host.tune_gc in every process (baseline too)",
        connection="unix socket" if args.unix_socket else "tcp loopback",
        events=args.events,
        payload_bytes=len(payload_tick().SerializeToString()),
        cpus=os.cpu_count(),
        load_average_1m_before=before,
        load_average_1m=load_average_1m(),
        targets={
            "events_per_s_over_baseline": 1.2,
            "cpu_us_per_event_total_over_baseline": 1.0,
            "events_per_s_idle": 50_000,
            "p99_ms_idle": 2.0,
        },
    )
    return result
