"""The composition root: the only module that imports core, every domain and the control plane.

It wires them for ``quantum run`` and ``quantum control-plane``. ``quantum run`` either hosts
its domains in this process (``--workers 1``, or one process of a layout written with
``--domains``, sharing consumer groups with the others), or supervises ``--workers N`` child
processes that do (``runtime.supervisor``, grouped by ``runtime.worker_layout``) while it
serves the control plane and prints the run's one summary. Nothing else may import it
(import-linter): domains stay unaware of each other and of how they are hosted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from quantum.events.v1.market_pb2 import MarketTick

from control_plane.auth import TokenConfigError
from control_plane.config import ConfigError
from control_plane.metrics_http import MetricsEndpoint, RuntimeCollector, SnapshotSource
from control_plane.server import ControlPlane, config_from_args
from control_plane.server import main as control_plane_main
from runtime import report
from runtime.adapters.redis.bus import ENVELOPE_FIELD, EventBus, PublishTimeout
from runtime.adapters.redis.client import RedisClient, open_client, ping
from runtime.adapters.redis.errors import AccessDenied, RedisError
from runtime.adapters.redis.host import Runtime, default_consumer_name, install_uvloop, tune_gc
from runtime.adapters.redis.policy_store import PolicyStore
from runtime.adapters.redis.reads import newest
from runtime.adapters.redis.retention import RetentionPolicy
from runtime.adapters.redis.runner import RunnerConfig
from runtime.core import otel
from runtime.core.actor import Actor
from runtime.core.envelope import decode_envelope
from runtime.core.keys import Keyspace
from runtime.core.logs import configure_logging, get_logger
from runtime.core.metrics import runtime_metrics
from runtime.core.policy import RiskMode, TradingState
from runtime.core.policy.model import Policy
from runtime.core.policy.ports import PolicyReader, PolicyWriter
from runtime.core.redis_server import RedisServerNotFound, redis_url
from runtime.core.upcasting import EMIT_VERSIONS_ENV, process_emit_versions
from runtime.domains.ai_engine import AiEngine
from runtime.domains.analytics import Analytics
from runtime.domains.execution import Execution, PaperExchange
from runtime.domains.market_data import CsvFeedError
from runtime.domains.portfolio import Portfolio
from runtime.domains.risk_safety import RiskSafety
from runtime.drain import DRAIN_TIMEOUT_S, drain
from runtime.feed_publishing import feed_ends_by_itself, feed_ticks, publish_feed
from runtime.redis_acl import DomainStreams, acl_file, redis_access_denied
from runtime.run_namespace import RunNamespace
from runtime.supervisor import Supervisor, Worker
from runtime.worker_command import FEED_DOMAIN, WorkerCommand
from runtime.worker_layout import FLOW_ORDER, assign, default_workers
from runtime.worker_main import unblock_stop_signals
from runtime.worker_metrics import WorkerMetrics, write_port

log = get_logger("runtime.bootstrap")

ActorFactory = Callable[[], Actor]
TICK_STREAM = "market.tick"
# Domains whose state is per symbol, so partitions by symbol can split them. risk_safety,
# portfolio and analytics keep the whole account (equity, exposure, drawdown): split, each
# part would believe it owned all of it, so --partition leaves them on their plain group.
PARTITIONABLE = frozenset({"ai_engine", "execution"})
STOP_TIMEOUT_S = 30.0


class PolicyControl(PolicyReader, PolicyWriter, Protocol):
    """What the domains are given: the live PolicyStore, or a replay's read-only stand-in."""


class ReplayPolicy:
    """The live policy for reading, and writes that are logged but never applied.

    A replay re-delivers old events to a fresh domain; analytics would otherwise react to
    an old drawdown by switching *today's* trading to DEFENSIVE or HALTED.
    """

    def __init__(self, store: PolicyReader) -> None:
        self._store = store

    def get_policy(self) -> Policy:
        return self._store.get_policy()

    async def switch_mode(
        self,
        mode: RiskMode,
        *,
        expected_version: int | None = None,
        changed_by: str,
        reason: str,
    ) -> Policy:
        log.info("replay_policy_write_not_applied", mode=mode, changed_by=changed_by, reason=reason)
        return self._store.get_policy()

    async def set_trading_state(
        self,
        state: TradingState,
        *,
        expected_version: int | None = None,
        changed_by: str,
        reason: str,
    ) -> Policy:
        log.info(
            "replay_policy_write_not_applied", state=state, changed_by=changed_by, reason=reason
        )
        return self._store.get_policy()


def actor_factories(store: PolicyControl, equity: Decimal) -> dict[str, ActorFactory]:
    """How each consuming domain is built; the same in every process that hosts it."""
    return {
        "ai_engine": AiEngine,
        "risk_safety": lambda: RiskSafety(store, starting_equity=equity),
        "execution": lambda: Execution(PaperExchange()),
        "portfolio": lambda: Portfolio(starting_equity=equity),
        "analytics": lambda: Analytics(store),
    }


# What each domain publishes (the table of DESIGN section 1); what it reads comes from its
# handlers. The Redis ACL file (``quantum redis-acl``) is built from both.
DOMAIN_OUTPUTS: dict[str, tuple[str, ...]] = {
    FEED_DOMAIN: ("market.tick",),
    "ai_engine": ("ai.signal.generated",),
    "risk_safety": ("risk.signal.approved", "risk.signal.rejected"),
    "execution": (
        "execution.order.submitted",
        "execution.order.filled",
        "execution.order.rejected",
    ),
    "portfolio": (
        "portfolio.position.opened",
        "portfolio.position.closed",
        "portfolio.pnl.updated",
    ),
    "analytics": ("analytics.stats.updated",),
}
_ACTOR_CLASSES: dict[str, type[Actor]] = {
    "ai_engine": AiEngine,
    "risk_safety": RiskSafety,
    "execution": Execution,
    "portfolio": Portfolio,
    "analytics": Analytics,
}


def domain_streams() -> dict[str, DomainStreams]:
    """Every domain's input and output event types."""
    return {
        name: DomainStreams(
            inputs=[t.name for t in _ACTOR_CLASSES[name].consumes()]
            if name in _ACTOR_CLASSES
            else [],
            outputs=list(outputs),
        )
        for name, outputs in DOMAIN_OUTPUTS.items()
    }


def redis_acl(args: argparse.Namespace) -> int:
    """``quantum redis-acl``: print the ACL file (password hashes left for you to fill in)."""
    print(acl_file(Keyspace(args.namespace), domain_streams(), {}), end="")
    return 0


async def _check_credentials(redis: RedisClient) -> None:
    """Fail at once on a refused user or password (AuthenticationError, NoPermissionError);
    an unreachable Redis is the PolicyStore's to judge (it may start from its snapshot)."""
    try:
        await ping(redis)
    except AccessDenied:
        await redis.aclose()
        raise
    except RedisError:
        pass


@dataclass
class _Services:
    """What every ``quantum run`` process shares: Redis, the namespace, policy and bus."""

    redis: RedisClient
    space: RunNamespace
    store: PolicyStore
    bus: EventBus
    since: dict[str, report.StreamPosition] = field(default_factory=dict)
    summary: report.RunSummary | None = None


@contextlib.asynccontextmanager
async def _services(
    args: argparse.Namespace, url: str, *, metrics_snapshot: SnapshotSource | None = None
) -> AsyncIterator[_Services]:
    """Open the run's services; on the way out stop them, summarise the run (unless this is a
    supervised worker: its supervisor summarises) and delete a namespace the run owns."""
    space = RunNamespace.choose(args.namespace)
    if space.owned:
        print(
            f"quantum run: namespace {space.name} (fresh for this run, deleted when it ends; "
            "--namespace NAME runs in a persistent one)",
            file=sys.stderr,
            flush=True,
        )
    redis = open_client(url, socket_connect_timeout=2.0)
    await _check_credentials(redis)
    state_dir = Path(args.state_dir)
    store = PolicyStore(redis, space.keyspace, state_dir=state_dir)
    retention = RetentionPolicy(
        retain=args.retain, backpressure_timeout_s=args.backpressure_timeout
    )
    bus = EventBus(redis, space.keyspace, producer="runtime", retention=retention)
    plane: ControlPlane | None = None
    worker_metrics: MetricsEndpoint | None = None
    tally: report.RejectionTally | None = None
    tally_task: asyncio.Task[None] | None = None
    services = _Services(redis, space, store, bus)
    started = False
    try:
        await store.start()
        started = True
        if not args.supervised:
            services.since = await report.stream_positions(redis, space.keyspace)
            after = services.since.get(report.REJECTED, report.StreamPosition())
            tally = report.RejectionTally(redis, space.keyspace, after)
            tally_task = asyncio.create_task(tally.run(), name="rejection-tally")
        if not args.no_control_plane:
            plane = ControlPlane(
                redis,
                space.keyspace,
                store,
                config=config_from_args(args),
                domain_factories=actor_factories(ReplayPolicy(store), args.equity),
                publisher=bus,
                metrics_snapshot=metrics_snapshot,
            )
            await plane.start()
        if args.metrics_port_file is not None:  # a worker: its supervisor serves these
            worker_metrics = MetricsEndpoint("127.0.0.1:0", RuntimeCollector())
            worker_metrics.start()
            write_port(args.metrics_port_file, worker_metrics.port)
        yield services
    finally:
        if worker_metrics is not None:
            worker_metrics.stop()
        if plane is not None:
            await plane.stop(grace=1.0)
        with contextlib.suppress(PublishTimeout):  # the bus logs what it could not send
            await bus.close(timeout=STOP_TIMEOUT_S)
        if tally is not None and tally_task is not None:
            tally.stop()
            await tally_task
            try:
                await tally.catch_up()
                services.summary = await report.summarize(
                    redis, space.keyspace, services.since, tally
                )
            except Exception:
                log.exception("summary_failed")
        if started:
            await store.stop()
        if space.owned:
            try:
                deleted = await space.discard(redis, state_dir)
                log.info("namespace_deleted", namespace=space.name, keys=deleted)
            except Exception as exc:  # Redis gone: say what is left behind, do not hide the run
                log.warning("namespace_not_deleted", namespace=space.name, error=str(exc))
        await redis.aclose()


def _stop_when_stdin_closes(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """A supervised worker's stdin is a pipe from its supervisor: EOF means it is gone."""
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            stop.set()

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)


async def _host(args: argparse.Namespace, url: str) -> int:
    """One process hosting ``args.domains``: the whole run, or one supervised worker."""
    async with _services(args, url) as services:
        exit_code = await _host_domains(args, services)
    if services.summary is not None:
        print(services.summary.render(), flush=True)
    return exit_code


async def _host_domains(args: argparse.Namespace, services: _Services) -> int:
    redis, keyspace, bus = services.redis, services.space.keyspace, services.bus
    factories = actor_factories(services.store, args.equity)
    hosted = [name for name in args.domains if name != FEED_DOMAIN]
    actors = [factories[name]() for name in hosted]
    partition, partitions = args.partition
    config = RunnerConfig(
        args.consumer_name or default_consumer_name(),
        lease_ttl_ms=args.lease_ttl,
        processed_ttl_s=args.dedupe_horizon,
    )
    partitioned = replace(config, partition=partition, partitions=partitions)
    configs = {name: partitioned for name in hosted if name in PARTITIONABLE}
    runtime = Runtime(
        actors, redis, keyspace, bus, config, configs=configs, max_traces=args.max_traces
    )
    tune_gc()  # start-up is done: what it made is frozen out of collections

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.supervised:
        _stop_when_stdin_closes(loop, stop)
        unblock_stop_signals()  # one sent while this worker started is delivered now
    runtime_task = asyncio.create_task(runtime.run(), name="runtime")
    feed_task: asyncio.Task[int] | None = None
    feed_stop = asyncio.Event()
    if FEED_DOMAIN in args.domains:
        ticks = feed_ticks(args, args.feed_start or datetime.now(UTC))
        feed_task = asyncio.create_task(
            publish_feed(bus, ticks, args.speed, feed_stop), name="feed"
        )
    log.info("run_started", domains=list(args.domains), namespace=keyspace.namespace)
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait()), runtime_task]
    if feed_task is not None:
        waiters.append(feed_task)
    # A feed that ends by itself ends the run; otherwise --duration is wall-clock time.
    timeout = None if feed_task is not None and feed_ends_by_itself(args) else args.duration
    exit_code = 0
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if feed_task is not None and feed_task in done and not stop.is_set():
            if feed_task.exception() is not None:
                raise feed_task.exception()  # type: ignore[misc]
            log.info("feed_ended", ticks=feed_task.result())
            feed_task = None
    except (CsvFeedError, ValueError) as exc:
        print(f"quantum run: {exc}", file=sys.stderr)
        exit_code = 2
    finally:
        if feed_task is not None:
            feed_stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(feed_task, timeout=5.0)
        with contextlib.suppress(PublishTimeout):  # the bus logs what it could not send
            await bus.flush(timeout=STOP_TIMEOUT_S)
        if not runtime_task.done() and not await drain(redis, runtime.runners):
            log.warning("drain_timeout", seconds=DRAIN_TIMEOUT_S)
        runtime.stop()
        exit_code = await _stopped(runtime, runtime_task) or exit_code
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if args.supervised:
            loop.remove_reader(sys.stdin.fileno())
    return exit_code


async def _stopped(runtime: Runtime, runtime_task: asyncio.Task[None]) -> int:
    """Wait for the runtime to stop; 1 when it failed or did not stop in time."""
    try:
        await asyncio.wait_for(asyncio.shield(runtime_task), STOP_TIMEOUT_S)
    except TimeoutError:
        # Never hang at exit: say which runners did not stop, then give up on them.
        running = [r.domain for r in runtime.runners if r.running]
        log.error("runtime_stop_timeout", seconds=STOP_TIMEOUT_S, still_running=running)
        for task in asyncio.all_tasks():
            where = [f"{f.f_code.co_filename}:{f.f_lineno}" for f in task.get_stack()]
            log.error("task_at_stop_timeout", task=task.get_name(), stack=where)
        runtime_task.cancel()
        return 1
    except Exception:
        log.exception("runtime_failed")
        return 1
    return 0


@contextlib.contextmanager
def _worker_metrics(state_dir: Path, workers: int) -> Iterator[WorkerMetrics]:
    """Where the workers publish their metrics ports, for the run's length.

    Under the state directory, not /tmp: a supervisor killed before it cleans up leaves its
    few bytes where the user keeps the run's other files.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=".workers-", dir=state_dir))
    try:
        yield WorkerMetrics(directory, workers, runtime_metrics().snapshot)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _supervise(
    args: argparse.Namespace, url: str, groups: list[tuple[str, ...]], metrics: WorkerMetrics
) -> int:
    """The parent of ``--workers N``: control plane, supervision and the one summary."""
    async with _services(args, url, metrics_snapshot=metrics.snapshot) as services:
        start = datetime.now(UTC)
        command = WorkerCommand(args, url, services.space.name, start, metrics.port_file)
        ticks_before = services.since.get(TICK_STREAM, report.StreamPosition()).entries_added

        async def argv(worker: Worker) -> list[str]:
            skip = 0
            if worker.starts and FEED_DOMAIN in worker.domains:  # resume after what is out
                now = await report.stream_position(
                    services.redis, services.space.keyspace, TICK_STREAM
                )
                skip = await feed_resume_point(
                    services.redis,
                    services.space.keyspace,
                    feed_ticks(args, start),
                    now.entries_added - ticks_before,
                )
            return command.argv(worker.index, worker.domains, feed_skip=skip)

        supervisor = Supervisor(groups, argv, ends_run=lambda worker: FEED_DOMAIN in worker.domains)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.duration is not None and FEED_DOMAIN not in args.domains:
            loop.call_later(args.duration, stop.set)
        log.info(
            "run_started",
            namespace=services.space.name,
            workers=[list(group) for group in groups],
        )
        try:
            exit_code = await supervisor.run(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    if services.summary is not None:
        print(services.summary.render(), flush=True)
    return exit_code


async def feed_resume_point(
    redis: RedisClient, keyspace: Keyspace, ticks: Iterable[MarketTick], appended: int
) -> int:
    """How many of the feed's ``ticks`` a restarted feed skips: up to the last tick on the
    stream, found by its symbol and sequence among the first ``appended`` (the entries this
    run added). Not ``appended`` itself: a publish retried after a lost reply (Redis restarted
    under it) appends a tick twice, and the feed would then skip one tick per duplicate."""
    if appended <= 0:
        return 0
    entry = await newest(redis, keyspace.stream(TICK_STREAM))
    if entry is None:
        return 0
    last = MarketTick.FromString(decode_envelope(entry[1][ENVELOPE_FIELD]).payload)
    for position, tick in enumerate(itertools.islice(ticks, appended)):
        if (tick.symbol, tick.sequence) == (last.symbol, last.sequence):
            return position + 1
    log.warning("feed_resume_point_not_found", symbol=last.symbol, sequence=last.sequence)
    return appended


def run(args: argparse.Namespace) -> int:
    """``quantum run``: host the chosen domains, in this process or over ``--workers``
    supervised processes, until the feed or the duration ends, or Ctrl-C."""
    configure_logging(args.log_level, log_format=args.log_format)
    install_uvloop()
    try:
        process_emit_versions()  # a typo in QUANTUM_EMIT_VERSIONS fails here, not per event
    except (ValueError, LookupError) as exc:
        message = str(exc) if EMIT_VERSIONS_ENV in str(exc) else f"{EMIT_VERSIONS_ENV}: {exc}"
        print(f"quantum run: {message}", file=sys.stderr)
        return 2
    layout_given = args.domains is not None or args.partition is not None
    args.domains = args.domains or FLOW_ORDER
    args.partition = args.partition or (0, 1)
    workers = args.workers or (1 if layout_given else default_workers(args.domains))
    try:
        groups = assign(args.domains, workers)
    except ValueError as exc:
        print(f"quantum run: {exc}", file=sys.stderr)
        return 2
    try:
        otel.configure_from_env()  # before the runtime is built: its hooks ask once
        with contextlib.ExitStack() as stack:
            url = args.redis_url or stack.enter_context(redis_url())
            if len(groups) == 1:
                return asyncio.run(_host(args, url))
            metrics = stack.enter_context(_worker_metrics(Path(args.state_dir), len(groups)))
            return asyncio.run(_supervise(args, url, groups, metrics))
    except (RedisServerNotFound, ConfigError, TokenConfigError, otel.OtelConfigError) as exc:
        print(f"quantum run: {exc}", file=sys.stderr)
        return 2
    except AccessDenied as exc:
        print(f"quantum run: {redis_access_denied(exc)}", file=sys.stderr)
        return 2
    finally:
        otel.shutdown()  # exports the spans still buffered


def control_plane(argv: Sequence[str]) -> int:
    """``quantum control-plane``: serve only the gRPC control plane."""
    return control_plane_main(argv)
