"""The control-plane server: every service on one grpc.aio server, plus metrics.

``ControlPlane`` is what the composition root builds (``quantum run``) with the process's
Redis client, PolicyStore, EventBus and domain factories. ``serve`` runs it alone
(``quantum control-plane``): it makes its own Redis client and PolicyStore and reads no
domain code, so it describes domains that run in other processes from Redis alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from quantum.control.v1 import (
    policy_service_pb2,
    policy_service_pb2_grpc,
    replay_service_pb2,
    replay_service_pb2_grpc,
    runtime_service_pb2,
    runtime_service_pb2_grpc,
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from quantum.control.v1.runtime_service_pb2 import ComponentHealth

from control_plane.auth import TokenTable
from control_plane.config import (
    DEFAULT_GRPC_ADDR,
    DEFAULT_METRICS_ADDR,
    ConfigError,
    ControlPlaneConfig,
    TlsConfig,
    check_exposure,
)
from control_plane.domains import DomainInspector
from control_plane.event_streams import EventStreams
from control_plane.figures import FiguresPoller
from control_plane.health import (
    CRITICAL,
    DEGRADED,
    HEALTHY,
    ComponentCheck,
    ServingWatcher,
    SystemHealth,
    component,
)
from control_plane.interceptors import CallWrapper
from control_plane.live_feed import LiveFeed
from control_plane.local_token import LOCAL_PRINCIPAL, create_local_token
from control_plane.metrics_http import MetricsEndpoint, RuntimeCollector, SnapshotSource
from control_plane.policy_servicer import PolicyServicer
from control_plane.replay_servicer import ActorFactory, EnvelopePublisher, ReplayServicer
from control_plane.runtime_servicer import RuntimeServicer
from control_plane.span_interceptor import SpanPerCall
from control_plane.trace_servicer import TraceServicer
from runtime.adapters.nats.errors import NatsAccessDenied
from runtime.adapters.redis.errors import AccessDenied
from runtime.adapters.redis.operator_store import RedisOperatorStore
from runtime.adapters.redis.publishers import StreamPublisher, open_publisher
from runtime.core import otel
from runtime.core.actor import Actor
from runtime.core.keys import Keyspace
from runtime.core.logs import add_logging_arguments, get_logger
from runtime.core.operator_store import OperatorStore
from runtime.core.partitioning import Partitioning
from runtime.core.policy.errors import PolicyUnavailable
from runtime.core.policy.ports import PolicyService
from runtime.core.policy.status import PolicyHealth
from runtime.core.registry import EventRegistry, default_registry
from runtime.engines import open_engine, open_operator_side

log = get_logger("control_plane.server")

STOP_STEP_TIMEOUT_S = 5.0

SERVICE_NAMES: tuple[str, ...] = (
    policy_service_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,
    trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name,
    replay_service_pb2.DESCRIPTOR.services_by_name["ReplayService"].full_name,
    runtime_service_pb2.DESCRIPTOR.services_by_name["RuntimeService"].full_name,
)


def _consumes(
    factories: Mapping[str, ActorFactory], registry: EventRegistry
) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, factory in factories.items():
        actor = factory()  # a throwaway instance: consumes() reads its class
        if isinstance(actor, Actor):
            found[name] = [t.name for t in type(actor).consumes(registry)]
    return found


def policy_check(store: PolicyService) -> ComponentCheck:
    """The PolicyStore as a health component."""

    async def check() -> ComponentHealth:
        status = store.status()
        figures = {"version": status.version, "seconds_since_sync": status.seconds_since_sync}
        if status.health is PolicyHealth.HEALTHY:
            return component("policy", HEALTHY, figures=figures)
        return component(
            "policy",
            DEGRADED,
            f"serving the last known policy; writes fail: {status.last_error}",
            figures,
        )

    return check


def exchange_check(inspector: DomainInspector, name: str = "paper") -> ComponentCheck:
    """The built-in paper exchange lives in the execution domain: healthy while it runs."""

    async def check() -> ComponentHealth:
        for domain in await inspector.figures():
            if domain.info.name == "execution":
                if domain.info.state == "RUNNING":
                    return component(f"exchange:{name}", HEALTHY)
                return component(
                    f"exchange:{name}",
                    DEGRADED if domain.info.state == "DEGRADED" else CRITICAL,
                    f"the execution domain, which hosts the {name} exchange, is "
                    f"{domain.info.state}",
                )
        return component(
            f"exchange:{name}", DEGRADED, "no execution domain is registered or running"
        )

    return check


class ControlPlane:
    """Builds, starts and stops the gRPC server and the metrics endpoint."""

    def __init__(
        self,
        store: OperatorStore,
        keyspace: Keyspace,
        policy_store: PolicyService,
        *,
        config: ControlPlaneConfig | None = None,
        tokens: TokenTable | None = None,
        domain_factories: Mapping[str, ActorFactory] | None = None,
        publisher: EnvelopePublisher | None = None,
        registry: EventRegistry | None = None,
        extra_checks: Sequence[ComponentCheck] | None = None,
        metrics_snapshot: SnapshotSource | None = None,
        partitioning: Partitioning | None = None,
    ) -> None:
        """``store`` and ``keyspace`` those of the run's engine (``Engine.operator_store``,
        ``Engine.keyspace``: hash-tagged keys on a Redis Cluster, subjects on JetStream);
        ``partitioning`` the run's stream partitions, so that reads of a type cover every
        partition. ``publisher`` is where replays and redrives publish: the engine's; on Redis
        the control plane opens its own when none is given."""
        self.config = config or ControlPlaneConfig()
        self._metrics_snapshot = metrics_snapshot  # default: this process's runtime metrics
        configured = tokens if tokens is not None else TokenTable.from_env()
        check_exposure(self.config.grpc_addr, configured.enabled)
        self.tokens = configured if configured.enabled else self._local_tokens()
        self.store = store
        self.keyspace = keyspace
        self.policy_store = policy_store
        self.registry = registry or default_registry()
        factories = dict(domain_factories or {})
        self._own_bus: StreamPublisher | None = None
        if publisher is None:
            if not isinstance(store, RedisOperatorStore):
                raise ValueError(f"give the control plane the {store.kind} engine's publisher")
            self._own_bus = open_publisher(
                store.redis, keyspace, producer="control_plane", partitioning=partitioning
            )
            publisher = self._own_bus
        self.streams = EventStreams(keyspace, self.registry, partitioning)
        self.inspector = DomainInspector(
            store,
            keyspace,
            _consumes(factories, self.registry),
            self.registry,
            partitioning=partitioning,
        )
        checks = (
            list(extra_checks)
            if extra_checks is not None
            else [policy_check(policy_store), exchange_check(self.inspector)]
        )
        self.system_health = SystemHealth(
            store,
            self.inspector,
            extra_checks=checks,
            postgres_dsn=self.config.postgres_dsn,
            disk_path=self.config.disk_path,
        )
        self.live_feed = LiveFeed(
            store,
            keyspace,
            self.registry,
            queue_size=self.config.subscriber_queue_size,
            partitioning=partitioning,
        )
        self.figures = FiguresPoller(
            store, keyspace, self.registry, self.system_health, partitioning=partitioning
        )
        self.health_servicer = HealthServicer()
        self.serving_watcher = ServingWatcher(self.health_servicer, store, SERVICE_NAMES)
        self._servicers = (
            PolicyServicer(policy_store),
            TraceServicer(
                store, keyspace, self.registry, self.live_feed, partitioning=partitioning
            ),
            ReplayServicer(
                store,
                self.streams,
                factories,
                publisher,
                known_domains=self.inspector.domain_names,
            ),
            RuntimeServicer(self.system_health, self.inspector),
        )
        self.server: aio.Server | None = None
        self.metrics: MetricsEndpoint | None = None
        self.port = 0

    def _local_tokens(self) -> TokenTable:
        """No tokens configured: writes still need one, made here (see local_token.py)."""
        state_dir = self.config.state_dir
        if state_dir is None:
            return TokenTable().with_local_operator(LOCAL_PRINCIPAL, secrets.token_urlsafe(32))
        token, path = create_local_token(state_dir)
        log.info("control_plane_local_token_created", path=str(path), mode="0600")
        return TokenTable().with_local_operator(LOCAL_PRINCIPAL, token)

    def _build_server(self) -> aio.Server:
        options = [
            *self.config.keepalive.server_options(),
            ("grpc.max_concurrent_streams", self.config.max_concurrent_streams),
            ("grpc.so_reuseport", 0),
        ]
        # A span per call only when spans are exported: the interceptor costs a coroutine a call.
        interceptors = [SpanPerCall()] if otel.ENABLED else None
        server = aio.server(options=options, interceptors=interceptors)
        # Our services get auth, tracing and error mapping; health and reflection stay open.
        wrapped = CallWrapper(self.tokens).registrar(server)
        policy, trace, replay, runtime = self._servicers
        policy_service_pb2_grpc.add_PolicyServiceServicer_to_server(policy, wrapped)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(trace, wrapped)
        replay_service_pb2_grpc.add_ReplayServiceServicer_to_server(replay, wrapped)
        runtime_service_pb2_grpc.add_RuntimeServiceServicer_to_server(runtime, wrapped)
        health_pb2_grpc.add_HealthServicer_to_server(self.health_servicer, server)
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        addr = self.config.grpc_addr
        try:
            if self.config.tls is not None:
                port = server.add_secure_port(addr, self.config.tls.server_credentials())
            else:
                port = server.add_insecure_port(addr)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {addr}: {exc}") from exc
        if port == 0:
            raise ConfigError(f"cannot listen on {addr}: the address is in use or invalid")
        self.port = port
        return server

    async def start(self) -> int:
        """Listen and serve; returns the gRPC port (useful with port 0)."""
        await self.serving_watcher.start()
        self.figures.start()
        try:
            self.server = self._build_server()
            await self.server.start()
        except BaseException:
            await self.stop(grace=0)  # the watcher task must not outlive a failed start
            raise
        if self.config.metrics_addr:
            self.metrics = MetricsEndpoint(
                self.config.metrics_addr,
                RuntimeCollector(self._metrics_snapshot, policy=self.policy_store.get_policy),
            )
            try:
                self.metrics.start()
            except OSError as exc:
                await self.stop(grace=0)
                raise ConfigError(
                    f"cannot serve metrics on {self.config.metrics_addr}: {exc.strerror}"
                ) from exc
        log.info(
            "control_plane_started",
            grpc_addr=self.config.grpc_addr,
            port=self.port,
            tls=self.config.tls is not None,
            mutual_tls=self.config.tls is not None and self.config.tls.client_ca is not None,
            tokens=len(self.tokens),
            metrics_addr=self.config.metrics_addr or None,
        )
        return self.port

    async def stop(self, grace: float | None = 2.0) -> None:
        """Stop accepting calls, let running ones finish within ``grace`` seconds, close.

        Every step is bounded, so a stuck part never keeps the process from exiting.
        """
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("serving_watcher", self.serving_watcher.stop),
            ("figures", self.figures.stop),
            ("live_feed", self.live_feed.stop),
        ]
        if self.server is not None:
            server = self.server
            steps.append(("grpc_server", lambda: server.stop(grace)))
        if self._own_bus is not None:
            steps.append(("event_bus", self._own_bus.close))
        for name, step in steps:
            try:
                async with asyncio.timeout((grace or 0.0) + STOP_STEP_TIMEOUT_S):
                    await step()
            except TimeoutError:
                log.error("control_plane_stop_step_timed_out", step=name)
        self.server = None
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        log.info("control_plane_stopped")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantum control-plane", description="Serve the gRPC control plane alone."
    )
    parser.add_argument(
        "--engine-url",
        "--redis-url",
        dest="redis_url",
        metavar="URL",
        default=os.environ.get("REDIS_URL"),
        help="the engine's URL (redis://, redis+cluster://, nats://); --redis-url is the same "
        "option; default: $REDIS_URL",
    )
    parser.add_argument("--namespace", default="quantum")
    parser.add_argument(
        "--stream-partitions",
        default="",
        help="the run's stream partitions, as quantum run was given them: TYPE=N[,TYPE=N...]",
    )
    parser.add_argument(
        "--state-dir", type=Path, default=Path(os.environ.get("QUANTUM_STATE_DIR", "state"))
    )
    add_logging_arguments(parser)
    add_server_arguments(parser)
    return parser


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The control plane's own options (TLS, PostgreSQL), for any command that serves it."""
    env = os.environ
    if not any(a.dest == "grpc_addr" for a in parser._actions):
        parser.add_argument("--grpc-addr", default=DEFAULT_GRPC_ADDR)
    if not any(a.dest == "metrics_addr" for a in parser._actions):
        parser.add_argument("--metrics-addr", default=DEFAULT_METRICS_ADDR)
    parser.add_argument("--tls-cert", type=Path, default=env.get("QUANTUM_TLS_CERT") or None)
    parser.add_argument("--tls-key", type=Path, default=env.get("QUANTUM_TLS_KEY") or None)
    parser.add_argument(
        "--tls-client-ca",
        type=Path,
        default=env.get("QUANTUM_TLS_CLIENT_CA") or None,
        help="require client certificates signed by this CA (mutual TLS)",
    )
    parser.add_argument("--postgres-dsn", default=env.get("QUANTUM_POSTGRES_DSN", ""))


def config_from_args(args: argparse.Namespace) -> ControlPlaneConfig:
    """A ControlPlaneConfig from parsed arguments (``quantum run`` / ``control-plane``)."""
    tls_cert = getattr(args, "tls_cert", None)
    tls_key = getattr(args, "tls_key", None)
    client_ca = getattr(args, "tls_client_ca", None)
    tls: TlsConfig | None = None
    if tls_cert or tls_key:
        if not (tls_cert and tls_key):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        tls = TlsConfig(Path(tls_cert), Path(tls_key), Path(client_ca) if client_ca else None)
    elif client_ca:
        raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key too")
    return ControlPlaneConfig(
        grpc_addr=getattr(args, "grpc_addr", DEFAULT_GRPC_ADDR),
        metrics_addr=getattr(args, "metrics_addr", DEFAULT_METRICS_ADDR),
        tls=tls,
        postgres_dsn=getattr(args, "postgres_dsn", "") or "",
        state_dir=Path(args.state_dir) if getattr(args, "state_dir", None) else None,
    )


async def serve(
    args: argparse.Namespace, *, ready: Callable[[ControlPlane], None] | None = None
) -> int:
    """Run the control plane alone until SIGINT/SIGTERM; returns the exit code."""
    from runtime.core.redis_server import redis_url

    config = config_from_args(args)
    tokens = TokenTable.from_env()
    check_exposure(config.grpc_addr, tokens.enabled)
    given = getattr(args, "stream_partitions", None)  # parsed already by quantum's parser
    partitioning = given if isinstance(given, Partitioning) else Partitioning.parse(given or "")
    with contextlib.ExitStack() as stack:
        url = args.redis_url or stack.enter_context(redis_url())
        async with contextlib.AsyncExitStack() as opened:  # closed in reverse, on any path
            engine = open_engine(url, Keyspace(args.namespace), partitioning=partitioning)
            opened.push_async_callback(engine.close)
            side = open_operator_side(
                url, engine, state_dir=Path(args.state_dir), socket_timeout=5.0
            )
            opened.push_async_callback(side.close)
            # Replays and redrives publish through the engine's publisher; on Redis the
            # control plane opens its own (ControlPlane).
            bus = None
            if engine.kind == "jetstream":
                bus = engine.publisher(producer="control_plane")
                opened.push_async_callback(bus.close)
            store = side.policy
            await store.start()
            opened.push_async_callback(store.stop)
            plane = ControlPlane(
                side.store,
                engine.keyspace,
                store,
                config=config,
                tokens=tokens,
                partitioning=partitioning,
                publisher=bus,
            )
            opened.push_async_callback(plane.stop)
            await plane.start()
            if ready is not None:
                ready(plane)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``quantum control-plane``: parse, configure logging, serve."""
    from runtime.adapters.redis.host import install_uvloop
    from runtime.core.logs import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, log_format=args.log_format)
    install_uvloop()
    try:
        otel.configure_from_env()  # spans are exported only when OTEL_* variables ask
        return asyncio.run(serve(args))
    except (ConfigError, ValueError, NatsAccessDenied, PolicyUnavailable) as exc:
        # otel.OtelConfigError is a ValueError; a refused or unreachable broker ends here
        print(f"quantum control-plane: {exc}", flush=True)
        return 2
    except AccessDenied as exc:
        print(
            f"quantum control-plane: Redis refused the user of --redis-url ({exc}); check the "
            "user and password (redis://USER:PASSWORD@HOST:PORT/0, rediss:// for TLS) and the "
            "ACL file (quantum redis-acl prints one)",
            flush=True,
        )
        return 2
    finally:
        otel.shutdown()  # exports the spans still buffered
