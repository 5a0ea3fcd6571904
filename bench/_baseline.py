"""The bare redis-py baseline of ``bench bus``: a producer XADDs 200-byte payloads in
pipelines of 1,000; a consumer reads them with XREADGROUP COUNT 1000 and acknowledges each read
with one XACK. No envelope, no handler, no guarantee."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench._pair import measure_pair, ready_and_go
from runtime.adapters.redis.host import install_uvloop

PAYLOAD_BYTES = 200
BASELINE_STREAM = "bench:baseline"
CHUNK = 1_000  # events per producer batch (the baseline's pipeline length)


def _baseline_producer(url: str, events: int, ready: Any, go: Any, result: Any) -> None:
    install_uvloop()
    import redis.asyncio as aioredis

    async def main() -> None:
        client = aioredis.Redis.from_url(url)
        await client.ping()
        data = b"x" * PAYLOAD_BYTES
        gc_clock = await ready_and_go(ready, go)
        cpu = time.process_time()
        sent = 0
        while sent < events:
            n = min(CHUNK, events - sent)
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(n):
                    pipe.xadd(
                        BASELINE_STREAM, {b"payload": data}, maxlen=1_000_000, approximate=True
                    )
                await pipe.execute()
            sent += n
        result.put(("producer", time.time(), time.process_time() - cpu, [], gc_clock.stop()))
        await client.aclose()

    asyncio.run(main())


def _baseline_consumer(url: str, events: int, ready: Any, go: Any, result: Any) -> None:
    install_uvloop()
    import redis.asyncio as aioredis

    async def main() -> None:
        client = aioredis.Redis.from_url(url)
        await client.ping()
        gc_clock = await ready_and_go(ready, go)
        cpu = time.process_time()
        seen = 0
        while seen < events:
            reply: Any = await client.xreadgroup(
                "g", "c", {BASELINE_STREAM: ">"}, count=CHUNK, block=1_000
            )
            if not reply:
                continue
            entries = reply[0][1]
            await client.xack(BASELINE_STREAM, "g", *[entry_id for entry_id, _ in entries])
            seen += len(entries)
        result.put(("consumer", time.time(), time.process_time() - cpu, [], gc_clock.stop()))
        await client.aclose()

    asyncio.run(main())


def measure_baseline(url: str, events: int, profile: Path | None = None) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url)
    client.delete(BASELINE_STREAM)
    client.xgroup_create(BASELINE_STREAM, "g", id="0", mkstream=True)
    client.close()
    return measure_pair(
        url, events, _baseline_producer, (url, events), _baseline_consumer, (url, events), profile
    )
