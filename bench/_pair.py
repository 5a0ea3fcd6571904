"""One producer and one consumer process started from a common go, and their figures: what
every ``bench bus`` measurement runs on."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import _pyspy
from bench._common import GcClock, process_cpu_s, redis_commands, redis_cpu_s, wait_for
from runtime.core.host import tune_gc


async def ready_and_go(ready: Any, go: Any) -> GcClock:
    """Tell the coordinator this process is set up, then wait for its go; from then on the
    returned clock adds up the time the garbage collector runs."""
    # The runtime's own GC setting (runtime.core.host.tune_gc, as its hosts do), in the
    # baseline's processes too: both sides are measured as they would run.
    tune_gc()
    ready.put("ready")
    await asyncio.to_thread(go.wait)
    return GcClock()


def measure_pair(
    url: str,
    events: int,
    producer: Callable[..., None],
    producer_args: tuple[Any, ...],
    consumer: Callable[..., None],
    consumer_args: tuple[Any, ...],
    profile: Path | None = None,
    broker_pids: list[int] | None = None,
) -> dict[str, Any]:
    """Run one producer and one consumer process from a common go; their figures.

    The broker's CPU comes from Redis's INFO CPU at ``url``, or, given ``broker_pids`` (a
    cluster's nodes, a nats-server), from those processes' CPU times."""
    import redis

    client = redis.Redis.from_url(url) if broker_pids is None else None

    def broker_cpu_s() -> float:
        if broker_pids is not None:
            return sum(process_cpu_s(pid) for pid in broker_pids)
        assert client is not None
        return redis_cpu_s(client)

    ctx = mp.get_context("spawn")
    ready, go, result = ctx.Queue(), ctx.Event(), ctx.Queue()
    processes = [
        ctx.Process(target=consumer, args=(*consumer_args, ready, go, result)),
        ctx.Process(target=producer, args=(*producer_args, ready, go, result)),
    ]
    for process in processes:
        process.start()
    spies: list[Any] = []
    try:
        wait_for(ready, 2)
        if profile is not None:
            for process, role in zip(processes, ("consumer", "producer"), strict=True):
                assert process.pid is not None
                spies.append(
                    _pyspy.attach(process.pid, profile.with_name(f"{profile.name}-{role}.txt"))
                )
            time.sleep(1.0)  # py-spy attached before the go
        if client is not None:
            client.config_resetstat()
        server_cpu = broker_cpu_s()
        started = time.time()
        go.set()
        reports = {name: rest for name, *rest in (result.get(timeout=600) for _ in processes)}
        server_cpu = broker_cpu_s() - server_cpu
        commands = redis_commands(client, events) if client is not None else {}
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        for spy in spies:
            spy.wait(timeout=30)
        if client is not None:
            client.close()
    consumed_at, consumer_cpu, latencies, consumer_gc = reports["consumer"]
    published_at, producer_cpu, _, producer_gc = reports["producer"]
    cpu = {
        "producer": producer_cpu / events * 1e6,
        "consumer": consumer_cpu / events * 1e6,
        "redis": server_cpu / events * 1e6,
    }
    cpu["total"] = sum(cpu.values())
    return {
        "events_per_s": events / (consumed_at - started),
        "published_per_s": events / (published_at - started),
        "cpu_us_per_event": {name: round(value, 2) for name, value in cpu.items()},
        "redis_commands_per_event": commands,
        "gc_us_per_event": {
            "producer": round(producer_gc / events * 1e6, 2),
            "consumer": round(consumer_gc / events * 1e6, 2),
        },
        "latencies": latencies,
    }
