"""The composition root: the only module that imports core, every domain and the control plane.

It wires them for ``quantum run`` (all six domains, or those named by ``--domains``, sharing
consumer groups with other processes) and ``quantum control-plane``. Nothing else may import
it (import-linter): domains stay unaware of each other and of how they are hosted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, cast

import redis.asyncio as aioredis
from quantum.events.v1.market_pb2 import MarketTick
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError

from control_plane.auth import TokenConfigError
from control_plane.config import ConfigError
from control_plane.server import ControlPlane, config_from_args
from control_plane.server import main as control_plane_main
from runtime import report
from runtime.adapters.redis.bus import EventBus, PublishTimeout
from runtime.adapters.redis.host import Runtime, default_consumer_name, install_uvloop
from runtime.adapters.redis.runner import RunnerConfig, entry_order
from runtime.core import otel
from runtime.core.actor import Actor
from runtime.core.keys import Keyspace
from runtime.core.logs import configure_logging, get_logger
from runtime.core.policy import RiskMode, TradingState
from runtime.core.policy.model import Policy
from runtime.core.policy.ports import PolicyReader, PolicyWriter
from runtime.core.policy.store import PolicyStore
from runtime.core.redis_server import RedisServerNotFound, redis_url
from runtime.core.upcasting import EMIT_VERSIONS_ENV, process_emit_versions
from runtime.domains.ai_engine import AiEngine
from runtime.domains.analytics import Analytics
from runtime.domains.execution import Execution, PaperExchange
from runtime.domains.market_data import (
    CsvFeed,
    CsvFeedError,
    SimulatedFeed,
    paced_batches,
    tick_envelope,
)
from runtime.domains.portfolio import Portfolio
from runtime.domains.risk_safety import RiskSafety
from runtime.redis_acl import DomainStreams, acl_file, redis_access_denied

log = get_logger("runtime.bootstrap")

ActorFactory = Callable[[], Actor]
FEED_DOMAIN = "market_data"
# Domains whose state is per symbol, so partitions by symbol can split them. risk_safety,
# portfolio and analytics keep the whole account (equity, exposure, drawdown): split, each
# part would believe it owned all of it, so --partition leaves them on their plain group.
PARTITIONABLE = frozenset({"ai_engine", "execution"})
DRAIN_TIMEOUT_S = 10.0
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


def _feed(args: argparse.Namespace) -> Iterable[MarketTick]:
    if args.feed is not None:
        return CsvFeed(args.feed)
    return SimulatedFeed.for_symbols(
        args.symbols, seed=args.seed, start=datetime.now(UTC), rate=args.rate
    )


async def _publish_feed(
    bus: EventBus, ticks: Iterable[MarketTick], speed: float | None, stop: asyncio.Event
) -> int:
    """Publish ticks at their recorded pace until the feed ends or ``stop`` is set.

    Stopping by event rather than by cancellation lets the publish in hand complete, so
    every tick the feed produced is either on the stream or was never sent.
    """
    published = 0
    publish = (  # with span export on, a span per tick, the root of its trace
        otel.traced_publish(bus.publish_envelopes, FEED_DOMAIN, from_handler=False)
        if otel.ENABLED
        else bus.publish_envelopes
    )
    async for batch in paced_batches(ticks, speed=speed):
        if stop.is_set():
            break
        await publish([tick_envelope(tick) for tick in batch])
        published += len(batch)
    return published


async def backlog_cleared(
    redis: aioredis.Redis, keyspace: Keyspace, actors: Sequence[Actor]
) -> bool:
    """True when every group of the hosted domains has read to the end and holds nothing.

    Compares each group's last-delivered id with the stream's last id rather than trusting
    XINFO's ``lag``, which Redis can only estimate once a stream has been trimmed.
    """
    for actor in actors:
        for event_type in actor.consumes():
            stream = keyspace.stream(event_type.name)
            try:
                groups = await redis.xinfo_groups(stream)
                last = cast(list[tuple[bytes, object]], await redis.xrevrange(stream, count=1))
            except ResponseError:  # no such stream yet: nothing to read
                continue
            if not last:
                continue
            last_id = entry_order(last[0][0])
            for group in groups:
                name = _text(group["name"])
                if not name.startswith(keyspace.group(actor.name)):
                    continue
                delivered = entry_order(group["last-delivered-id"])
                if int(group.get("pending") or 0) or delivered < last_id:
                    return False
    return True


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def drain(
    redis: aioredis.Redis,
    keyspace: Keyspace,
    actors: Sequence[Actor],
    timeout_s: float = DRAIN_TIMEOUT_S,
) -> bool:
    """Wait until the hosted domains have handled everything on their streams; False when
    ``timeout_s`` passed first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await backlog_cleared(redis, keyspace, actors):
            return True
        await asyncio.sleep(0.05)
    return False


async def _check_credentials(redis: aioredis.Redis) -> None:
    """Fail at once on a refused user or password (AuthenticationError, NoPermissionError);
    an unreachable Redis is the PolicyStore's to judge (it may start from its snapshot)."""
    try:
        await redis.ping()
    except (AuthenticationError, NoPermissionError):
        await redis.aclose()
        raise
    except RedisError:
        pass


async def _run(args: argparse.Namespace, url: str) -> int:
    keyspace = Keyspace(args.namespace)
    redis = aioredis.Redis.from_url(url, socket_connect_timeout=2.0)
    await _check_credentials(redis)
    store = PolicyStore(redis, keyspace, state_dir=Path(args.state_dir))
    await store.start()
    since = await report.stream_positions(redis, keyspace)
    factories = actor_factories(store, args.equity)
    hosted = [name for name in args.domains if name != FEED_DOMAIN]
    actors = [factories[name]() for name in hosted]
    bus = EventBus(redis, keyspace, producer="runtime")
    partition, partitions = args.partition
    config = RunnerConfig(default_consumer_name())
    partitioned = replace(config, partition=partition, partitions=partitions)
    configs = {name: partitioned for name in hosted if name in PARTITIONABLE}
    runtime = Runtime(actors, redis, keyspace, bus, config, configs=configs)
    plane: ControlPlane | None = None
    if not args.no_control_plane:
        plane = ControlPlane(
            redis,
            keyspace,
            store,
            config=config_from_args(args),
            domain_factories=actor_factories(ReplayPolicy(store), args.equity),
            publisher=bus,
        )
        await plane.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runtime_task = asyncio.create_task(runtime.run(), name="runtime")
    feed_task: asyncio.Task[int] | None = None
    feed_stop = asyncio.Event()
    if FEED_DOMAIN in args.domains:
        feed_task = asyncio.create_task(
            _publish_feed(bus, _feed(args), args.speed, feed_stop), name="feed"
        )
    log.info("run_started", domains=list(args.domains), namespace=keyspace.namespace)
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait()), runtime_task]
    if feed_task is not None:
        waiters.append(feed_task)
    timeout = args.duration
    exit_code = 0
    try:
        while True:
            done, _ = await asyncio.wait(
                waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if feed_task is not None and feed_task in done and not stop.is_set():
                if feed_task.exception() is not None:
                    raise feed_task.exception()  # type: ignore[misc]
                log.info("feed_ended", ticks=feed_task.result())
                waiters.remove(feed_task)
                feed_task = None
                if args.duration is None:
                    break  # a recorded feed ran out: finish its events, then stop
                continue
            break
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
        if not runtime_task.done() and not await drain(redis, keyspace, actors):
            log.warning("drain_timeout", seconds=DRAIN_TIMEOUT_S)
        runtime.stop()
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
            exit_code = exit_code or 1
        except Exception:
            log.exception("runtime_failed")
            exit_code = exit_code or 1
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if plane is not None:
            await plane.stop(grace=1.0)
        with contextlib.suppress(PublishTimeout):
            await bus.close(timeout=STOP_TIMEOUT_S)
        summary = await report.summarize(redis, keyspace, since)
        await store.stop()
        await redis.aclose()
    print(summary.render(), flush=True)
    return exit_code


def run(args: argparse.Namespace) -> int:
    """``quantum run``: host the chosen domains until the duration ends or Ctrl-C."""
    configure_logging(args.log_level, log_format=args.log_format)
    install_uvloop()
    try:
        process_emit_versions()  # a typo in QUANTUM_EMIT_VERSIONS fails here, not per event
    except (ValueError, LookupError) as exc:
        message = str(exc) if EMIT_VERSIONS_ENV in str(exc) else f"{EMIT_VERSIONS_ENV}: {exc}"
        print(f"quantum run: {message}", file=sys.stderr)
        return 2
    try:
        otel.configure_from_env()  # before the runtime is built: its hooks ask once
        with contextlib.ExitStack() as stack:
            url = args.redis_url or stack.enter_context(redis_url())
            return asyncio.run(_run(args, url))
    except (RedisServerNotFound, ConfigError, TokenConfigError, otel.OtelConfigError) as exc:
        print(f"quantum run: {exc}", file=sys.stderr)
        return 2
    except (AuthenticationError, NoPermissionError) as exc:
        print(f"quantum run: {redis_access_denied(exc)}", file=sys.stderr)
        return 2
    finally:
        otel.shutdown()  # exports the spans still buffered


def control_plane(argv: Sequence[str]) -> int:
    """``quantum control-plane``: serve only the gRPC control plane."""
    return control_plane_main(argv)
