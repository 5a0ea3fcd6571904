"""``python -m bench bus``: the event bus and runner, end to end, against a bare redis-py loop.

Three measurements on one private redis-server (started here, stopped after):

- ``baseline_events_per_s``: a producer process XADDs 200-byte payloads in pipelines of 1,000
  and a consumer process reads them with XREADGROUP COUNT 1000 and acknowledges each read
  with one XACK — no envelope, no handler, no guarantees. The floor of what Redis and
  redis-py allow on this machine.
- ``events_per_s``: the same shape through the runtime: a producer process publishes with
  ``EventBus.publish`` (concurrent calls, auto-batched), a consumer process runs a
  ``DomainRunner`` with a one-handler domain; from the first publish to the last
  acknowledgement (processed marks and all).
- ``p50_ms`` / ``p99_ms``: publish-to-handler latency at a fixed offered load (default
  10,000 events/s): the producer publishes on a 1 ms schedule, the handler measures the time
  since the envelope was sealed.

Producer and consumer run in separate processes, as in production, so the numbers include
the contention for this machine's cores with Redis itself.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any

from quantum.events.v1.market_pb2 import MarketTick

from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.host import install_uvloop
from runtime.adapters.redis.runner import DomainRunner, RunnerConfig
from runtime.core.actor import Actor, HandlerContext, handles
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from runtime.core.redis_server import start_redis_server

PAYLOAD_BYTES = 200
STREAM = "bench:baseline"


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
            sealed_s = sealed.seconds + sealed.nanos / 1e9
            self.latencies.append(time.time() - sealed_s)


# -- the bare redis-py baseline --------------------------------------------------------------


def _baseline_producer(url: str, events: int, start_at: float, result: Any) -> None:
    install_uvloop()
    import redis.asyncio as aioredis

    async def main() -> None:
        client = aioredis.Redis.from_url(url)
        data = b"x" * PAYLOAD_BYTES
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu = time.process_time()
        sent = 0
        while sent < events:
            n = min(1_000, events - sent)
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(n):
                    pipe.xadd(STREAM, {b"payload": data}, maxlen=1_000_000, approximate=True)
                await pipe.execute()
            sent += n
        result.put(("producer", (time.time(), time.process_time() - cpu)))
        await client.aclose()

    asyncio.run(main())


def _baseline_consumer(url: str, events: int, result: Any) -> None:
    install_uvloop()
    import redis.asyncio as aioredis

    async def main() -> None:
        client = aioredis.Redis.from_url(url)
        await client.ping()
        cpu = time.process_time()
        seen = 0
        first = 0.0
        while seen < events:
            reply = await client.xreadgroup("g", "c", {STREAM: ">"}, count=1_000, block=1_000)
            if not reply:
                continue
            entries = reply[0][1]
            if not first:
                first = time.time()
            await client.xack(STREAM, "g", *[entry_id for entry_id, _ in entries])
            seen += len(entries)
        result.put(("consumer", (time.time(), time.process_time() - cpu)))
        await client.aclose()

    asyncio.run(main())


def _redis_cpu_s(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure_baseline(url: str, events: int) -> dict[str, float]:
    import redis

    client = redis.Redis.from_url(url)
    client.delete(STREAM)
    client.xgroup_create(STREAM, "g", id="0", mkstream=True)
    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    start_at = time.time() + 1.5  # both processes imported and connected by then
    consumer = ctx.Process(target=_baseline_consumer, args=(url, events, result))
    producer = ctx.Process(target=_baseline_producer, args=(url, events, start_at, result))
    consumer.start()
    producer.start()
    redis_cpu = _redis_cpu_s(client)
    reports = dict(result.get(timeout=600) for _ in range(2))
    redis_cpu = _redis_cpu_s(client) - redis_cpu
    producer.join()
    consumer.join()
    finished, consumer_cpu = reports["consumer"]
    _, producer_cpu = reports["producer"]
    client.delete(STREAM)
    client.close()
    return {
        "events_per_s": events / (finished - start_at),
        "producer_cpu_us": producer_cpu / events * 1e6,
        "consumer_cpu_us": consumer_cpu / events * 1e6,
        "redis_cpu_us": redis_cpu / events * 1e6,
    }


# -- the runtime -----------------------------------------------------------------------------


def _runtime_producer(
    url: str, namespace: str, events: int, start_at: float, rate: int, result: Any
) -> None:
    """Publish ``events`` ticks: as fast as possible with concurrent ``publish`` calls (rate
    0) or ``publish_many`` batches (rate -1), or at ``rate`` per second."""
    install_uvloop()
    import redis.asyncio as aioredis

    async def main() -> None:
        client = aioredis.Redis.from_url(url)
        bus = EventBus(
            client,
            Keyspace(namespace),
            producer="market_data",
            maxlen=2_000_000,
            metrics=RuntimeMetrics(),
        )
        tick = payload_tick()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu = time.process_time()
        if rate < 0:
            # Batches of 1,000 through publish_many, up to 4 batches awaiting Redis at a time.
            batches: set[asyncio.Future[Any]] = set()
            for start in range(0, events, 1_000):
                if len(batches) >= 4:
                    _, batches = await asyncio.wait(batches, return_when=asyncio.FIRST_COMPLETED)
                n = min(1_000, events - start)
                batches.add(
                    asyncio.ensure_future(bus.publish_many([tick] * n, partition_key="BTCUSDT"))
                )
            await asyncio.gather(*batches)
        elif rate == 0:
            # Concurrent publish calls in chunks of 1,000, up to 4 chunks awaiting Redis.
            chunks: set[asyncio.Future[Any]] = set()
            for start in range(0, events, 1_000):
                if len(chunks) >= 4:
                    _, chunks = await asyncio.wait(chunks, return_when=asyncio.FIRST_COMPLETED)
                n = min(1_000, events - start)
                chunks.add(
                    asyncio.gather(*(bus.publish(tick, partition_key="BTCUSDT") for _ in range(n)))
                )
            await asyncio.gather(*chunks)
        else:
            began = time.perf_counter()
            sent = 0
            pending: set[asyncio.Task[Any]] = set()
            while sent < events:
                due = min(events, int((time.perf_counter() - began) * rate) + 1)
                for _ in range(due - sent):
                    task = asyncio.ensure_future(bus.publish(tick, partition_key="BTCUSDT"))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                sent = due
                await asyncio.sleep(0.001)
            await asyncio.gather(*pending)
        result.put(("producer", (time.time(), time.process_time() - cpu)))
        await bus.close()
        await client.aclose()

    asyncio.run(main())


def _runtime_consumer(url: str, namespace: str, events: int, measure: bool, result: Any) -> None:
    install_uvloop()
    import redis.asyncio as aioredis

    async def main() -> None:
        client = aioredis.Redis.from_url(url)
        keyspace = Keyspace(namespace)
        metrics = RuntimeMetrics()
        bus = EventBus(client, keyspace, producer=BenchSink.name, metrics=metrics)
        actor = BenchSink(events, measure=measure)
        runner = DomainRunner(
            actor,
            client,
            keyspace,
            bus,
            RunnerConfig(consumer_name="bench", batch_size=1_000, block_ms=100),
            metrics=metrics,
        )
        task = asyncio.create_task(runner.run())
        cpu = time.process_time()
        await actor.reached.wait()  # all handled; now wait for the last acknowledgement
        while metrics.consumed.value(BenchSink.name, "market.tick") < events:  # noqa: ASYNC110
            await asyncio.sleep(0.0002)
        finished = time.time()
        cpu = time.process_time() - cpu
        await runner.stop()
        await task
        await bus.close()
        await client.aclose()
        result.put(("consumer", (finished, actor.latencies, cpu)))

    asyncio.run(main())


def measure_runtime(url: str, events: int, rate: int) -> tuple[dict[str, float], list[float]]:
    """Run producer and consumer processes.

    Returns figures — end-to-end events per second, the producer's own publish rate (when it
    is close to the first, publishing is the bottleneck), CPU microseconds per event of
    producer, consumer and redis-server — and the handler latencies in seconds.
    """
    import redis

    client = redis.Redis.from_url(url)
    namespace = f"bench-{os.getpid()}-{rate}"
    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    start_at = time.time() + 2.0
    consumer = ctx.Process(
        target=_runtime_consumer, args=(url, namespace, events, rate > 0, result)
    )
    producer = ctx.Process(
        target=_runtime_producer, args=(url, namespace, events, start_at, rate, result)
    )
    consumer.start()
    producer.start()
    redis_cpu = _redis_cpu_s(client)
    reports = dict(result.get(timeout=600) for _ in range(2))
    redis_cpu = _redis_cpu_s(client) - redis_cpu
    producer.join()
    consumer.join()
    client.close()
    finished, latencies, consumer_cpu = reports["consumer"]
    published, producer_cpu = reports["producer"]
    figures = {
        "events_per_s": events / (finished - start_at),
        "producer_publish_per_s": events / (published - start_at),
        "producer_cpu_us": producer_cpu / events * 1e6,
        "consumer_cpu_us": consumer_cpu / events * 1e6,
        "redis_cpu_us": redis_cpu / events * 1e6,
    }
    return figures, latencies


def _cpu(figures: dict[str, float]) -> dict[str, float]:
    """CPU time per event by process: what the work costs, whatever else the machine runs."""
    return {name: round(figures[f"{name}_cpu_us"], 2) for name in ("producer", "consumer", "redis")}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench bus")
    parser.add_argument("--events", type=int, default=200_000, help="events per throughput run")
    parser.add_argument("--rate", type=int, default=10_000, help="offered load for latency")
    parser.add_argument("--latency-seconds", type=float, default=3.0)
    parser.add_argument(
        "--only", choices=("baseline", "throughput", "latency"), help="run one measurement"
    )
    args = parser.parse_args(argv)
    wanted = {args.only} if args.only else {"baseline", "throughput", "latency"}
    server = start_redis_server()
    try:
        print(f"bench bus: redis-server on port {server.port}", file=sys.stderr)
        result: dict[str, Any] = {}
        if "baseline" in wanted:
            base = measure_baseline(server.url, args.events)
            print(f"bench bus: baseline {base['events_per_s']:,.0f} events/s", file=sys.stderr)
            result["baseline_events_per_s"] = round(base["events_per_s"])
            result["baseline_cpu_us_per_event"] = _cpu(base)
        if "throughput" in wanted:
            ours, _ = measure_runtime(server.url, args.events, rate=0)
            print(f"bench bus: runtime {ours['events_per_s']:,.0f} events/s", file=sys.stderr)
            result["events_per_s"] = round(ours["events_per_s"])
            result["producer_publish_per_s"] = round(ours["producer_publish_per_s"])
            result["cpu_us_per_event"] = _cpu(ours)
            many, _ = measure_runtime(server.url, args.events, rate=-1)
            print(f"bench bus: publish_many {many['events_per_s']:,.0f} events/s", file=sys.stderr)
            result["events_per_s_publish_many"] = round(many["events_per_s"])
            result["cpu_us_per_event_publish_many"] = _cpu(many)
        if "baseline" in wanted and "throughput" in wanted:
            result["ratio_to_baseline"] = round(ours["events_per_s"] / base["events_per_s"], 3)
        if "latency" in wanted:
            latency_events = int(args.rate * args.latency_seconds)
            _, latencies = measure_runtime(server.url, latency_events, rate=args.rate)
            # The first second warms up connections and caches: leave it out.
            steady = latencies[args.rate :] or latencies
            result.update(
                p50_ms=round(statistics.median(steady) * 1000, 3),
                p99_ms=round(_percentile(steady, 0.99) * 1000, 3),
                max_ms=round(max(steady) * 1000, 3),
                offered_load_per_s=args.rate,
                latency_samples=len(steady),
            )
    finally:
        server.stop()
    result.update(
        events=args.events,
        payload_bytes=len(payload_tick().SerializeToString()),
        cpus=os.cpu_count(),
        load_average_1m=round(os.getloadavg()[0], 2),
    )
    return result
