"""A worker process for the process-level tests: runs TickCounter until SIGTERM/SIGINT.

    python -m tests.process.worker REDIS_URL NAMESPACE CONSUMER [BATCH_SIZE]

Prints "ready" on standard output once its runner is started, so the test knows when to
begin killing it. Exits with run_actors' code (0 after a clean drain).
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as aioredis

from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.host import install_uvloop, run_actors
from runtime.adapters.redis.retention import RetentionPolicy
from runtime.adapters.redis.runner import RunnerConfig
from runtime.core.keys import Keyspace
from runtime.core.logs import configure_logging
from tests.process.actors import TickCounter


async def main(url: str, namespace: str, consumer: str, batch_size: int) -> int:
    configure_logging("WARNING")
    client = aioredis.Redis.from_url(url)
    keyspace = Keyspace(namespace)
    # Every output is kept (the test counts them all; no group reads them).
    bus = EventBus(
        client,
        keyspace,
        producer=TickCounter.name,
        maxlen=1_000_000,
        retention=RetentionPolicy(retain=1_000_000),
    )
    config = RunnerConfig(
        consumer_name=consumer,
        batch_size=batch_size,
        block_ms=100,
        lease_ttl_ms=1_000,  # a restarted worker takes its partition over within a second
        retry_base_ms=10,
        retry_cap_ms=100,
    )

    def ready(_runtime: object) -> None:
        print("ready", flush=True)

    try:
        return await run_actors([TickCounter()], client, keyspace, bus, config, on_ready=ready)
    finally:
        await client.aclose()


if __name__ == "__main__":
    install_uvloop()
    url, namespace, consumer = sys.argv[1:4]
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    raise SystemExit(asyncio.run(main(url, namespace, consumer, batch)))
