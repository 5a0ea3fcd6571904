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
from runtime.adapters.nats.errors import NatsAccessDenied, NatsUnreachable
from runtime.adapters.redis.bus import ENVELOPE_FIELD, PublishTimeout
from runtime.adapters.redis.errors import AccessDenied, RedisError
from runtime.core import otel
from runtime.core.actor import Actor
from runtime.core.delivery import RunnerConfig
from runtime.core.engine import ActorHost, Engine
from runtime.core.envelope import decode_envelope
from runtime.core.host import default_consumer_name, install_uvloop, tune_gc
from runtime.core.keys import Keyspace
from runtime.core.logs import configure_logging, get_logger
from runtime.core.metrics import runtime_metrics
from runtime.core.operator_store import OperatorStore
from runtime.core.partitioning import UNPARTITIONED, Partitioning
from runtime.core.policy import RiskMode, TradingState
from runtime.core.policy.errors import PolicyUnavailable
from runtime.core.policy.model import Policy
from runtime.core.policy.ports import PolicyReader, PolicyService, PolicyWriter
from runtime.core.publisher import DEFAULT_MAX_BUFFER, Publisher
from runtime.core.redis_server import RedisServerNotFound, redis_url
from runtime.core.upcasting import EMIT_VERSIONS_ENV, process_emit_versions
from runtime.domains.ai_engine import AiEngine
from runtime.domains.analytics import Analytics
from runtime.domains.execution import Execution, PaperExchange
from runtime.domains.market_data import CsvFeedError
from runtime.domains.portfolio import Portfolio
from runtime.domains.risk_safety import RiskSafety
from runtime.drain import DRAIN_TIMEOUT_S, drain
from runtime.engines import (
    EngineSettings,
    OperatorSide,
    UnknownEngine,
    engine_kind,
    open_engine,
    open_operator_side,
)
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


def engine_problem(url: str | None) -> str | None:
    """Why ``quantum run`` cannot run on the engine ``url`` names; None when it can (one
    Redis, a Redis Cluster or NATS JetStream)."""
    if not url:
        return None
    try:
        kind = engine_kind(url)
    except UnknownEngine as exc:
        return str(exc)
    if kind == "memory":
        return "memory:// is the in-process engine of backtests: use quantum backtest"
    return None


def partition_problem(
    domains: Sequence[str], partitions: int, partitioning: Partitioning
) -> str | None:
    """Why ``--partition I/N`` cannot read ``--stream-partitions``' logs; None when it can:
    a split domain reads, of each input split in M partitions, those congruent to its own
    partition, so N must divide M (or M be 1)."""
    for name in domains:
        if name not in PARTITIONABLE or partitions == 1:
            continue
        for event_type in _ACTOR_CLASSES[name].consumes():
            count = partitioning.count(event_type.name)
            if count > 1 and count % partitions:
                return (
                    f"--partition .../{partitions} splits {name}, which reads "
                    f"{event_type.name} in {count} partitions: give {event_type.name} a "
                    f"multiple of {partitions} in --stream-partitions"
                )
    return None


# A broker that refused the credentials (fail at once), or did not answer (go on).
_REFUSED: tuple[type[Exception], ...] = (*AccessDenied, NatsAccessDenied)
_UNREACHABLE: tuple[type[Exception], ...] = (RedisError, *NatsUnreachable, OSError, TimeoutError)


async def _check_credentials(side: OperatorSide) -> None:
    """Fail at once on refused credentials (Redis's AuthenticationError, NoPermissionError;
    NATS's authorization violation); an unreachable broker is the PolicyStore's to judge (it
    may start from its snapshot)."""
    try:
        await side.store.ping()
    except _REFUSED:
        raise
    except _UNREACHABLE as exc:
        log.warning("broker_not_answering_at_start", error=f"{type(exc).__name__}: {exc}")


@dataclass
class _Services:
    """What every ``quantum run`` process shares: the engine and its operator side, the
    namespace, policy and bus."""

    side: OperatorSide
    space: RunNamespace
    engine: Engine
    bus: Publisher
    since: dict[str, report.StreamPosition] = field(default_factory=dict)
    summary: report.RunSummary | None = None

    @property
    def keyspace(self) -> Keyspace:
        """The engine's names for this run's namespace (a cluster's carry hash tags)."""
        return self.engine.keyspace

    @property
    def reads(self) -> OperatorStore:
        """The engine's log and records as the summary, the drain and operators read them."""
        return self.side.store

    @property
    def store(self) -> PolicyService:
        """The PolicyStore (on the engine's broker)."""
        return self.side.policy


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
    partitioning: Partitioning = args.stream_partitions
    engine = open_engine(
        url,
        space.keyspace,
        partitioning=partitioning,
        settings=EngineSettings(
            retain=args.retain,
            backpressure_timeout_s=args.backpressure_timeout,
            max_traces=args.max_traces,
        ),
    )
    keyspace = engine.keyspace
    state_dir = Path(args.state_dir)
    side: OperatorSide | None = None
    try:
        side = open_operator_side(url, engine, state_dir=state_dir)
        await _check_credentials(side)
    except BaseException:
        if side is not None:
            await side.close()
        await engine.close()
        raise
    reads, store = side.store, side.policy
    bus = engine.publisher(producer="runtime")
    plane: ControlPlane | None = None
    worker_metrics: MetricsEndpoint | None = None
    tally: report.RejectionTally | None = None
    tally_task: asyncio.Task[None] | None = None
    services = _Services(side, space, engine, bus)
    started = False
    try:
        await store.start()
        started = True
        if not args.supervised:
            services.since = await report.stream_positions(reads, keyspace, partitioning)
            tally = report.RejectionTally(reads, keyspace, services.since, partitioning)
            tally_task = asyncio.create_task(tally.run(), name="rejection-tally")
        if not args.no_control_plane:
            plane = ControlPlane(
                reads,
                keyspace,
                store,
                config=config_from_args(args),
                domain_factories=actor_factories(ReplayPolicy(store), args.equity),
                publisher=bus,
                metrics_snapshot=metrics_snapshot,
                partitioning=partitioning,
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
                    reads, keyspace, services.since, tally, partitioning
                )
            except Exception:
                log.exception("summary_failed")
        if started:
            await store.stop()
        if space.owned:
            try:
                deleted = await space.discard(reads, state_dir)
                log.info("namespace_deleted", namespace=space.name, keys=deleted)
            except Exception as exc:  # broker gone: say what is left behind, do not hide the run
                log.warning("namespace_not_deleted", namespace=space.name, error=str(exc))
        await side.close()
        await engine.close()


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
    keyspace, bus = services.keyspace, services.bus
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
    runtime = ActorHost(services.engine, actors, bus, config, configs=configs)
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
        if not runtime_task.done() and not await drain(services.reads, runtime.runners):
            log.warning("drain_timeout", seconds=DRAIN_TIMEOUT_S)
        runtime.stop()
        exit_code = await _stopped(runtime, runtime_task) or exit_code
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if args.supervised:
            loop.remove_reader(sys.stdin.fileno())
    return exit_code


async def _stopped(runtime: ActorHost, runtime_task: asyncio.Task[None]) -> int:
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
        partitioning: Partitioning = args.stream_partitions

        async def argv(worker: Worker) -> list[str]:
            skip = 0
            if worker.starts and FEED_DOMAIN in worker.domains:  # resume after what is out
                appended = await report.appended(
                    services.reads, services.keyspace, services.since, TICK_STREAM, partitioning
                )
                skip = await feed_resume_point(
                    services.reads,
                    services.keyspace,
                    feed_ticks(args, start),
                    appended,
                    partitioning,
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
    reads: OperatorStore,
    keyspace: Keyspace,
    ticks: Iterable[MarketTick],
    appended: int,
    partitioning: Partitioning = UNPARTITIONED,
) -> int:
    """How many of the feed's ``ticks`` a restarted feed skips, found among the first
    ``appended`` (the entries this run added) by symbol and sequence. Not ``appended``
    itself: a publish retried after a lost reply (Redis restarted under it) appends a tick
    twice, and the feed would then skip one tick per duplicate.

    With the ticks split in partitions, each partition's newest tick says how far that
    partition got; the feed resumes at the first tick some partition does not hold yet (a
    crash may have stored a later tick of one partition and not an earlier one of another:
    that later one is then published a second time, a duplicate tick like those a retried
    publish makes).
    """
    if appended <= 0:
        return 0
    topics = partitioning.topics(TICK_STREAM)
    newest_of: dict[str, tuple[str, int]] = {}
    for topic in topics:
        entry = await reads.newest(keyspace.stream(topic))
        if entry is not None:
            last = MarketTick.FromString(decode_envelope(entry[1][ENVELOPE_FIELD]).payload)
            newest_of[topic] = (last.symbol, last.sequence)
    if not newest_of:
        return 0
    reached: dict[str, int] = {}  # topic -> feed position of its newest tick
    first_after: dict[str, int] = {}  # topic -> first position past it (not stored)
    # Split, the stored ticks may reach past ``appended`` positions: by what was in flight
    # (at most a publisher's buffer) when some partition's append was lost.
    window = appended if len(topics) == 1 else appended + DEFAULT_MAX_BUFFER
    for position, tick in enumerate(itertools.islice(ticks, window)):
        topic = partitioning.topic(TICK_STREAM, tick.symbol)
        if newest_of.get(topic) == (tick.symbol, tick.sequence):
            reached[topic] = position
            first_after.pop(topic, None)
        elif topic not in first_after and (topic in reached or topic not in newest_of):
            first_after[topic] = position
        if len(reached) == len(newest_of) and len(first_after) == len(topics):
            break  # every partition's first missing tick is known
    if set(reached) != set(newest_of):
        missing = sorted(set(newest_of) - set(reached))
        log.warning("feed_resume_point_not_found", topics=missing)
        return appended
    resume = min(first_after.values(), default=max(reached.values()) + 1)
    return resume


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
    refused = engine_problem(args.redis_url)
    if refused:
        print(f"quantum run: {refused}", file=sys.stderr)
        return 2
    layout_given = args.domains is not None or args.partition is not None
    args.domains = args.domains or FLOW_ORDER
    args.partition = args.partition or (0, 1)
    problem = partition_problem(args.domains, args.partition[1], args.stream_partitions)
    if problem:
        print(f"quantum run: {problem}", file=sys.stderr)
        return 2
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
    except (NatsAccessDenied, PolicyUnavailable) as exc:  # refused, or down with no snapshot
        print(f"quantum run: {exc}", file=sys.stderr)
        return 2
    finally:
        otel.shutdown()  # exports the spans still buffered


def control_plane(argv: Sequence[str]) -> int:
    """``quantum control-plane``: serve only the gRPC control plane."""
    return control_plane_main(argv)
