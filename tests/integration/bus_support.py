"""Helpers shared by the bus and runner integration tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from runtime.adapters.redis.runner import DomainRunner


async def wait_until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(runner: DomainRunner) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``runner`` for the block, then stop it (drain) and surface its errors."""
    task = asyncio.create_task(runner.run())
    try:
        yield task
    finally:
        await runner.stop()
        await task
