"""The host: several runners in one process, stopped together with a clean drain."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.host import Runtime
from runtime.adapters.redis.runner import RunnerConfig, group_name
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from tests.integration.bus_support import wait_until
from tests.process.actors import FlakyTicks, TickCounter, tick


async def test_a_runtime_runs_several_actors_and_drains_them_on_stop(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    counter, flaky = TickCounter(), FlakyTicks()
    runtime = Runtime([counter, flaky], aredis, keyspace, bus, RunnerConfig("c1", block_ms=20))
    task = asyncio.create_task(runtime.run())
    await bus.publish_many([tick("BTC", i) for i in range(1, 101)])
    await wait_until(lambda: counter.counts.get("BTC") == 100 and len(flaky.handled) == 100)
    runtime.stop()
    await asyncio.wait_for(task, 10)
    stream = keyspace.stream("market.tick")
    for name in (counter.name, flaky.name):
        assert (await aredis.xpending(stream, group_name(keyspace, name)))["pending"] == 0
    await bus.close()


async def test_stop_before_run_has_started_still_stops_it(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    runtime = Runtime([TickCounter()], aredis, keyspace, bus, RunnerConfig("c1", block_ms=20))
    runtime.stop()
    await asyncio.wait_for(runtime.run(), 10)
    await bus.close()
