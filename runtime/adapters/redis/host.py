"""Hosting several domains in one process on Redis, with a clean drain on SIGTERM/SIGINT.

The same domains run all in one process or one per process (``--domains``): a ``Runtime`` is
given the actors this process hosts and runs a ``DomainRunner`` for each. On SIGTERM or
SIGINT every runner stops reading, finishes and commits the batch in hand, the bus flushes,
and ``run_actors`` returns 0 — the process exits cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis

from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.runner import DomainRunner
from runtime.core.actor import Actor
from runtime.core.delivery import RunnerConfig
from runtime.core.host import default_consumer_name, install_uvloop, tune_gc
from runtime.core.keys import Keyspace
from runtime.core.logs import get_logger
from runtime.core.trace_index import DEFAULT_MAX_TRACES

__all__ = ["Runtime", "default_consumer_name", "install_uvloop", "run_actors", "tune_gc"]

_log = get_logger("runtime.host")


class Runtime:
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
        base = config or RunnerConfig(consumer_name=default_consumer_name())
        per_domain = configs or {}
        self.bus = bus
        self.runners = [
            DomainRunner(
                actor,
                redis,
                keyspace,
                bus,
                per_domain.get(actor.name, base),
                max_traces=max_traces,
            )
            for actor in actors
        ]
        self._stop_requested: asyncio.Event | None = None
        self._stopping = False  # stop() may come before run() has started

    async def run(self) -> None:
        """Run every runner until ``stop()``; a runner that fails stops the others."""
        self._stop_requested = asyncio.Event()
        if self._stopping:
            self._stop_requested.set()
        tasks = [
            asyncio.create_task(runner.run(), name=f"runner-{runner.domain}")
            for runner in self.runners
        ]
        waiter = asyncio.create_task(self._stop_requested.wait())
        try:
            done, _ = await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
            failed = [t for t in done if t is not waiter and t.exception() is not None]
        finally:
            await asyncio.gather(*(runner.stop() for runner in self.runners))
            results = await asyncio.gather(*tasks, return_exceptions=True)
            waiter.cancel()
            await self.bus.flush()
        for task in failed:
            raise task.exception()  # type: ignore[misc]
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result

    def stop(self) -> None:
        """Ask every runner to drain and stop (safe from a signal handler)."""
        self._stopping = True
        if self._stop_requested is not None:
            self._stop_requested.set()


async def run_actors(
    actors: Sequence[Actor],
    redis: aioredis.Redis,
    keyspace: Keyspace,
    bus: EventBus,
    config: RunnerConfig | None = None,
    *,
    configs: dict[str, RunnerConfig] | None = None,
    on_ready: Callable[[Runtime], None] | None = None,
) -> int:
    """Run ``actors`` until SIGTERM or SIGINT, then drain; returns the exit code (0 = clean)."""
    runtime = Runtime(actors, redis, keyspace, bus, config, configs=configs)
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, _on_signal, runtime, sig)
            handled.append(sig)
    tune_gc()
    try:
        if on_ready is not None:
            on_ready(runtime)
        await runtime.run()
    except Exception:
        _log.exception("runtime_failed")
        return 1
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await bus.close()
    _log.info("runtime_drained", domains=[r.domain for r in runtime.runners])
    return 0


def _on_signal(runtime: Runtime, sig: signal.Signals) -> None:
    _log.info("shutdown_requested", signal=sig.name)
    runtime.stop()
