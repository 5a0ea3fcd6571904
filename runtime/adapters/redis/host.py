"""Hosting several domains in one process on Redis, with a clean drain on SIGTERM/SIGINT.

The same domains run all in one process or one per process (``--domains``): a ``Runtime`` is
given the actors this process hosts and runs a ``DomainRunner`` for each. On SIGTERM or
SIGINT every runner stops reading, finishes and commits the batch in hand, the bus flushes,
and ``run_actors`` returns 0 — the process exits cleanly. Both are the broker-neutral
``ActorHost`` and ``run_on_engine`` (``runtime.core.engine``) on a ``RedisEngine`` over the
caller's client.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import redis.asyncio as aioredis

from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.engine import RedisEngine
from runtime.core.actor import Actor
from runtime.core.delivery import RunnerConfig
from runtime.core.engine import ActorHost, run_on_engine
from runtime.core.host import default_consumer_name, install_uvloop, tune_gc
from runtime.core.keys import Keyspace
from runtime.core.trace_index import DEFAULT_MAX_TRACES

__all__ = ["Runtime", "default_consumer_name", "install_uvloop", "run_actors", "tune_gc"]


class Runtime(ActorHost):
    """Runs a set of actors, one ``DomainRunner`` each, sharing one Redis client and bus."""

    def __init__(
        self,
        actors: Sequence[Actor],
        redis: aioredis.Redis,
        keyspace: Keyspace,
        bus: EventBus,
        config: RunnerConfig | None = None,
        *,
        configs: dict[str, RunnerConfig] | None = None,
        max_traces: int = DEFAULT_MAX_TRACES,
    ) -> None:
        engine = RedisEngine(redis, keyspace, max_traces=max_traces)
        super().__init__(engine, actors, bus, config, configs=configs)
        self.bus = bus


async def run_actors(
    actors: Sequence[Actor],
    redis: aioredis.Redis,
    keyspace: Keyspace,
    bus: EventBus,
    config: RunnerConfig | None = None,
    *,
    configs: dict[str, RunnerConfig] | None = None,
    on_ready: Callable[[ActorHost], None] | None = None,
) -> int:
    """Run ``actors`` until SIGTERM or SIGINT, then drain; returns the exit code (0 = clean).
    Closes ``bus``; the client stays the caller's."""
    engine = RedisEngine(redis, keyspace)
    return await run_on_engine(engine, actors, bus, config, configs=configs, on_ready=on_ready)
