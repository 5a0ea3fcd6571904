"""PolicyStore: cached read cost, write latency, and propagation to other processes' caches.

``python -m bench policy [--writes N] [--watchers N] [--reads N]`` starts a private
redis-server, one writing store in this process and ``--watchers`` stores in their own
processes, and prints:

- ``read_ns``: one ``get_policy()`` call, averaged over ``--reads`` calls;
- ``write_p50_ms`` / ``write_p99_ms``: one compare-and-set ``update`` (Lua script: policy,
  history record, event, trace index);
- ``propagate_p50_ms`` / ``propagate_p99_ms``: from the start of a write until the last of
  the watcher processes' caches holds the new version (CLOCK_MONOTONIC is machine-wide).

Targets: read <= 1,000 ns, write p99 <= 2 ms, propagation p99 <= 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from runtime.adapters.redis.policy_store import PolicyStore
from runtime.core.keys import Keyspace
from runtime.core.logs import configure_logging
from runtime.core.redis_server import start_redis_server

TARGETS = {"read_ns": 1000.0, "write_p99_ms": 2.0, "propagate_p99_ms": 10.0}
NAMESPACE = "bench-policy"


def _run_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _watch(url: str, state_dir: str) -> None:
    """A watcher process: print each version its cache takes, with the time it took it."""
    client = aioredis.Redis.from_url(url)
    store = PolicyStore(client, Keyspace(NAMESPACE), state_dir=Path(state_dir))
    await store.start()

    async def follow() -> None:
        async for policy in store.subscribe(include_current=False):
            sys.stdout.write(f"{policy.version} {time.monotonic_ns()}\n")
            sys.stdout.flush()

    task = asyncio.create_task(follow())
    sys.stdout.write(f"ready {store.get_policy().version}\n")
    sys.stdout.flush()
    await asyncio.to_thread(sys.stdin.read)  # until the bench closes our standard input
    task.cancel()
    await store.stop()
    await client.aclose()


async def _collect(process: asyncio.subprocess.Process, seen: dict[int, int]) -> None:
    assert process.stdout is not None
    async for line in process.stdout:
        version, seen_ns = line.decode().split()
        if version != "ready":
            seen[int(version)] = int(seen_ns)


async def _bench(url: str, workdir: Path, writes: int, watchers: int, reads: int) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url)
    store = PolicyStore(client, Keyspace(NAMESPACE), state_dir=workdir / "writer")
    await store.start()
    processes = []
    for index in range(watchers):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.policy",
            "--watch",
            url,
            str(workdir / f"watcher-{index}"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        ready = await asyncio.wait_for(process.stdout.readline(), 30)
        if not ready.startswith(b"ready"):
            raise RuntimeError(f"watcher {index} did not start: {ready!r}")
        processes.append(process)
    seen: list[dict[int, int]] = [{} for _ in processes]
    collectors = [asyncio.create_task(_collect(p, s)) for p, s in zip(processes, seen, strict=True)]

    warmup = 20
    started_ns: dict[int, int] = {}
    write_ms: list[float] = []
    for step in range(warmup + writes):
        begin = time.monotonic_ns()
        policy = await store.update(
            {"normal.max_position_notional": 20_000 + step},
            expected_version=store.get_policy().version,
            changed_by="bench",
            reason="latency",
        )
        elapsed = time.monotonic_ns() - begin
        if step >= warmup:
            started_ns[policy.version] = begin
            write_ms.append(elapsed / 1e6)
        await asyncio.sleep(0.003)  # let every watcher take it: measure latency, not queues
    last = store.get_policy().version
    for _ in range(1000):  # at most 10 s for the last change to reach every watcher
        if all(last in s for s in seen):
            break
        await asyncio.sleep(0.01)

    propagate_ms = [
        (max(s[version] for s in seen) - begin) / 1e6
        for version, begin in started_ns.items()
        if all(version in s for s in seen)
    ]

    read = store.get_policy
    begin = time.perf_counter_ns()
    for _ in range(reads):
        read()
    read_ns = (time.perf_counter_ns() - begin) / reads

    for process in processes:
        assert process.stdin is not None
        process.stdin.close()
    for process in processes:
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
    for collector in collectors:
        collector.cancel()
    await store.stop()
    await client.aclose()

    result: dict[str, Any] = {
        "read_ns": round(read_ns, 1),
        "write_p50_ms": round(statistics.median(write_ms), 3),
        "write_p99_ms": round(_percentile(write_ms, 0.99), 3),
        "propagate_p50_ms": round(statistics.median(propagate_ms), 3),
        "propagate_p99_ms": round(_percentile(propagate_ms, 0.99), 3),
        "writes": writes,
        "watchers": watchers,
        "propagated": len(propagate_ms),
        "targets": TARGETS,
    }
    result["meets_targets"] = all(result[name] <= limit for name, limit in TARGETS.items())
    return result


def run(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench policy")
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--watchers", type=int, default=3)
    parser.add_argument("--reads", type=int, default=2_000_000)
    options = parser.parse_args(argv)
    configure_logging("WARNING")
    server = start_redis_server()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-policy-") as folder:
            result: dict[str, Any] = _run_loop(
                _bench(server.url, Path(folder), options.writes, options.watchers, options.reads)
            )
            return result
    finally:
        server.stop()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--watch":
        configure_logging("WARNING")
        _run_loop(_watch(sys.argv[2], sys.argv[3]))
    else:
        print(json.dumps(run(sys.argv[1:]), indent=2))
