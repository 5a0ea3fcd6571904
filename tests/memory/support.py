"""Helpers of the in-memory transport tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from runtime.adapters.memory import MemoryBroker
from runtime.core.delivery import DeliveryLoop, RunnerConfig

FAST = RunnerConfig(consumer_name="c1", block_ms=50, retry_base_ms=10, retry_cap_ms=40)
TICKS = "market.tick"
PNL = "portfolio.pnl.updated"


@contextlib.asynccontextmanager
async def running(loop: DeliveryLoop) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``loop`` for the block, then stop it (drain) and surface its errors."""
    task = asyncio.create_task(loop.run())
    try:
        yield task
    finally:
        await loop.stop()
        await task


def pending(broker: MemoryBroker, domain: str, event_type: str = TICKS) -> int:
    return len(broker.pending(broker.stream_of(event_type), broker.keyspace.group(domain)))
