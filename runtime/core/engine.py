"""An engine as the composition root sees it: one broker, opened from a URL (DESIGN section 4).

Each adapter package (``runtime.adapters.<engine>``) provides one ``Engine``: it builds
publishers and domain runners on its transport and answers the few reads that operators and
the conformance suite need, so that a process hosting domains, a test of a guarantee, or a
benchmark is written once and runs on every engine. ``ActorHost`` runs a set of actors on an
engine until asked to stop, then drains them (SIGTERM/SIGINT: ``run_on_engine``).

The composition root picks the engine from the URL (``runtime.engines.open_engine``);
nothing else changes between engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from runtime.core.actor import Actor
from runtime.core.dead_letters import DeadLetter
from runtime.core.delivery import DeliveryLoop, RunnerConfig
from runtime.core.host import default_consumer_name, tune_gc
from runtime.core.keys import Keyspace
from runtime.core.logs import get_logger
from runtime.core.metrics import RuntimeMetrics
from runtime.core.operator_store import OperatorStore
from runtime.core.partitioning import Partitioning
from runtime.core.publisher import Publisher

_log = get_logger("runtime.engine")


class Engine(Protocol):
    """One broker behind the transport interfaces (``runtime.core.transport``)."""

    kind: str  # "redis", "redis_cluster", "jetstream" or "memory"
    keyspace: Keyspace
    partitioning: Partitioning

    def publisher(
        self,
        *,
        producer: str = "",
        metrics: RuntimeMetrics | None = None,
    ) -> Publisher:
        """A publisher on this engine's event log (batching, retries, bounded buffer)."""
        ...

    def runner(
        self,
        actor: Actor,
        config: RunnerConfig,
        publisher: Publisher,
        *,
        metrics: RuntimeMetrics | None = None,
    ) -> DeliveryLoop:
        """The delivery loop of one actor (one partition of its domain: ``config``) whose
        outputs go where ``publisher`` appends."""
        ...

    async def read(self, topic: str, *, count: int = 10_000) -> list[tuple[str, bytes]]:
        """The first ``count`` entries stored on a topic, oldest first: (entry id, envelope
        bytes as stored)."""
        ...

    async def dead_letters(self, domain: str, *, count: int = 10_000) -> list[DeadLetter]:
        """A domain's dead letters, oldest first."""
        ...

    async def load_state(
        self, domain: str, partition: int = 0, partitions: int = 1
    ) -> bytes | None:
        """The state snapshot a domain partition's last commit stored (None: none yet)."""
        ...

    def operator_store(self) -> OperatorStore:
        """What operators and a run's summary read and change on this engine (sharing its
        connections); ``OperationUnsupported`` on an engine without one."""
        ...

    async def close(self) -> None: ...


class ActorHost:
    """Runs a set of actors on one engine, one delivery loop each, with one publisher."""

    def __init__(
        self,
        engine: Engine,
        actors: Sequence[Actor],
        publisher: Publisher,
        config: RunnerConfig | None = None,
        *,
        configs: Mapping[str, RunnerConfig] | None = None,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        base = config or RunnerConfig(consumer_name=default_consumer_name())
        per_domain = configs or {}
        self.engine = engine
        self.publisher = publisher
        self.runners = [
            engine.runner(actor, per_domain.get(actor.name, base), publisher, metrics=metrics)
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
            await self.publisher.flush()
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


async def run_on_engine(
    engine: Engine,
    actors: Sequence[Actor],
    publisher: Publisher,
    config: RunnerConfig | None = None,
    *,
    configs: Mapping[str, RunnerConfig] | None = None,
    on_ready: Callable[[ActorHost], None] | None = None,
) -> int:
    """Run ``actors`` until SIGTERM or SIGINT, then drain; returns the exit code (0 = clean).
    Closes the publisher; the engine stays the caller's."""
    host = ActorHost(engine, actors, publisher, config, configs=configs)
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, _on_signal, host, sig)
            handled.append(sig)
    tune_gc()
    try:
        if on_ready is not None:
            on_ready(host)
        await host.run()
    except Exception:
        _log.exception("runtime_failed", engine=engine.kind)
        return 1
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await publisher.close()
    _log.info("runtime_drained", engine=engine.kind, domains=[r.domain for r in host.runners])
    return 0


def _on_signal(host: ActorHost, sig: signal.Signals) -> None:
    _log.info("shutdown_requested", signal=sig.name)
    host.stop()
