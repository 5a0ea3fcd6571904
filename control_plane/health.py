"""Health: the standard grpc.health.v1 service, and the detailed system health.

``ServingWatcher`` pings Redis every second and flips every service of the standard health
service between SERVING and NOT_SERVING, so probes (and grpcurl) see a lost Redis at once.
``SystemHealth`` grades each component HEALTHY, DEGRADED or CRITICAL and caches the answer
for 5 seconds, so a dashboard polling it costs Redis almost nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import psutil
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from quantum.control.v1.runtime_service_pb2 import (
    ComponentHealth,
    GetSystemHealthResponse,
    HealthStatus,
)

from control_plane.domains import (
    RUNNING_WITHIN_S,
    STALE_AFTER_S,
    DomainInspector,
    domain_of_group,
)
from control_plane.stuck_groups import StuckGroup, StuckGroupWatch
from runtime.adapters.redis.retention import DEFAULT_STUCK_AFTER_S
from runtime.core.envelope import timestamp
from runtime.core.logs import get_logger
from runtime.core.metrics import RuntimeMetrics, runtime_metrics
from runtime.core.operator_store import OperatorStore

log = get_logger("control_plane.health")

HEALTHY = HealthStatus.HEALTH_STATUS_HEALTHY
DEGRADED = HealthStatus.HEALTH_STATUS_DEGRADED
CRITICAL = HealthStatus.HEALTH_STATUS_CRITICAL

CACHE_S = 5.0
REDIS_SLOW_MS = 50.0
# How many pings in a row must be slow before the broker counts as slow (see _broker_health).
SLOW_PINGS = 3
LAG_DEGRADED = 10_000
HOST_DEGRADED_PCT = 90.0
HOST_CRITICAL_PCT = 97.0

ComponentCheck = Callable[[], Awaitable[ComponentHealth]]

# quantum_component_health's values; the same numbers as ``quantumctl health``'s exit codes.
HEALTH_LEVELS: Mapping[HealthStatus.ValueType, int] = {HEALTHY: 0, DEGRADED: 1, CRITICAL: 2}


def component(
    name: str,
    status: HealthStatus.ValueType,
    detail: str = "",
    figures: Mapping[str, float | int] | None = None,
) -> ComponentHealth:
    return ComponentHealth(
        name=name,
        status=status,
        detail=detail,
        figures={key: _figure(value) for key, value in (figures or {}).items()},
    )


def _figure(value: float | int) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


async def ping_ms(store: OperatorStore, timeout_s: float = 1.0) -> float:
    """Round-trip time of one ping of the broker in milliseconds; raises when it does not
    answer."""
    started = time.perf_counter()
    async with asyncio.timeout(timeout_s):
        await store.ping()
    return (time.perf_counter() - started) * 1000


def broker_name(store: OperatorStore) -> str:
    """The broker's component name in the health report: ``redis`` (one or a cluster) or
    ``nats``."""
    return "nats" if store.kind == "jetstream" else "redis"


class ServingWatcher:
    """Keeps the grpc.health.v1 statuses in step with the broker's reachability."""

    def __init__(
        self,
        servicer: HealthServicer,
        store: OperatorStore,
        services: Sequence[str],
        *,
        interval_s: float = 1.0,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        self._metrics = metrics or runtime_metrics()
        self._servicer = servicer
        self._store = store
        self._services = ["", *services]
        self._interval_s = interval_s
        self._ping_timeout_s = max(2 * interval_s, 1.0)
        self._failures = 0
        self._task: asyncio.Task[None] | None = None
        self.serving: bool | None = None

    async def start(self) -> None:
        await self.check_once()
        self._task = asyncio.create_task(self._run(), name="control-plane-serving-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # Tell watchers the server is going away (NOT_SERVING) before it stops.
        await self._servicer.enter_graceful_shutdown()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.check_once()

    async def check_once(self) -> None:
        """Ping the broker once; update the serving status and the broker gauges."""
        try:
            latency_ms = await ping_ms(self._store, timeout_s=self._ping_timeout_s)
            self._failures = 0
            self._metrics.redis_up.set(value=1.0)
            self._metrics.redis_ping.set(value=latency_ms / 1000)
        except Exception as exc:  # any failure to answer counts
            self._metrics.redis_up.set(value=0.0)
            self._failures += 1
            if self._failures == 1:
                log.warning("redis_ping_failed", error=f"{type(exc).__name__}: {exc}")
        # One slow answer on a busy loop is not an outage: flip after two failures in a row.
        serving = self._failures < 2 and not (self.serving is None and self._failures)
        if serving != self.serving:
            if self.serving is not None or not serving:
                log.info("redis_back" if serving else "redis_lost", serving=serving)
            self.serving = serving
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for service in self._services:
                await self._servicer.set(service, status)


class SystemHealth:
    """The detailed health of every component, cached for ``cache_s`` seconds."""

    def __init__(
        self,
        store: OperatorStore,
        inspector: DomainInspector,
        *,
        extra_checks: Sequence[ComponentCheck] = (),
        postgres_dsn: str = "",
        disk_path: Path = Path("/"),
        cache_s: float = CACHE_S,
        metrics: RuntimeMetrics | None = None,
        stuck_after_s: float = DEFAULT_STUCK_AFTER_S,
    ) -> None:
        self._metrics = metrics or runtime_metrics()
        self._store = store
        self._inspector = inspector
        self._extra_checks = list(extra_checks)
        self._postgres_dsn = postgres_dsn
        self._disk_path = disk_path
        self._cache_s = cache_s
        self._stuck = StuckGroupWatch(stuck_after_s)
        self._cached: tuple[float, GetSystemHealthResponse] | None = None
        self._inflight: asyncio.Task[GetSystemHealthResponse] | None = None
        psutil.cpu_percent(interval=None)  # the first reading is meaningless; prime it

    async def check(self) -> GetSystemHealthResponse:
        """The cached answer when fresh, else a new one (concurrent callers share it)."""
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self._cache_s:
            return self._cached[1]
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._check_all())
        response = await asyncio.shield(self._inflight)
        self._cached = (time.monotonic(), response)
        return response

    async def measure(self) -> GetSystemHealthResponse:
        """A fresh answer that bypasses the cache and leaves it alone (the metrics poller's
        view: callers of ``check`` keep their own 5-second rhythm)."""
        return await self._check_all()

    async def _check_all(self) -> GetSystemHealthResponse:
        components: list[ComponentHealth] = [await self._broker_health()]
        if components[0].status != CRITICAL:
            components.extend(await self._domain_health())
        for check in self._extra_checks:
            try:
                components.append(await check())
            except Exception as exc:
                components.append(component("check", CRITICAL, f"the check failed: {exc}"))
        if self._postgres_dsn:
            components.append(await self._postgres_health())
        components.append(self._host_health())
        for each in components:
            self._metrics.component_health.set(each.name, value=HEALTH_LEVELS.get(each.status, 2))
        worst = max((c.status for c in components), default=HEALTHY)
        return GetSystemHealthResponse(status=worst, components=components, checked_at=timestamp())

    async def _broker_health(self) -> ComponentHealth:
        name = broker_name(self._store)
        shown = "Redis" if name == "redis" else "NATS"
        try:
            latency = await ping_ms(self._store)
            # One slow round trip is as often this process's busy event loop as the broker:
            # slow means slow SLOW_PINGS times in a row, and the report shows the fastest.
            for _ in range(SLOW_PINGS - 1):
                if latency <= REDIS_SLOW_MS:
                    break
                latency = min(latency, await ping_ms(self._store))
        except Exception as exc:
            return component(
                name, CRITICAL, f"{shown} does not answer: {type(exc).__name__}: {exc}"
            )
        if latency > REDIS_SLOW_MS:
            return component(
                name,
                DEGRADED,
                f"{SLOW_PINGS} pings in a row took over {REDIS_SLOW_MS} ms "
                f"(the fastest {latency:.1f} ms)",
                figures={"latency_ms": latency},
            )
        return component(name, HEALTHY, figures={"latency_ms": latency})

    async def _domain_health(self) -> list[ComponentHealth]:
        try:
            figures = await self._inspector.figures()
        except Exception as exc:
            return [component("domains", DEGRADED, f"cannot read the consumer groups: {exc}")]
        stuck: dict[str, list[StuckGroup]] = {}
        for group in self._stuck.update(g for d in figures for g in d.info.groups):
            stuck.setdefault(domain_of_group(group.group), []).append(group)
        result = []
        for domain in figures:
            age = domain.heartbeat_age_s
            values: dict[str, float | int] = {"lag": domain.lag, "pending": domain.pending}
            if age is not None:
                values["heartbeat_age_s"] = age
            name = f"domain:{domain.info.name}"
            if age is None:
                result.append(component(name, CRITICAL, "no heartbeat from any process", values))
            elif age > STALE_AFTER_S:
                result.append(component(name, CRITICAL, f"last heartbeat {age:.0f} s ago", values))
            elif age > RUNNING_WITHIN_S:
                result.append(component(name, DEGRADED, f"last heartbeat {age:.0f} s ago", values))
            elif domain.info.name in stuck:
                first = stuck[domain.info.name][0]
                result.append(
                    component(
                        name,
                        DEGRADED,
                        f"group {first.group} on {first.stream} has not moved for "
                        f"{first.still_for_s:.0f} s while {first.behind} entries behind",
                        values,
                    )
                )
            elif domain.lag > LAG_DEGRADED:
                result.append(
                    component(
                        name, DEGRADED, f"{domain.lag} entries behind (> {LAG_DEGRADED})", values
                    )
                )
            else:
                result.append(component(name, HEALTHY, figures=values))
        return result

    async def _postgres_health(self) -> ComponentHealth:
        parts = urlsplit(self._postgres_dsn)
        host, port = parts.hostname or "127.0.0.1", parts.port or 5432
        started = time.perf_counter()
        try:
            async with asyncio.timeout(1.0):
                _reader, writer = await asyncio.open_connection(host, port)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        except Exception as exc:
            return component(
                "postgres", CRITICAL, f"cannot connect to {host}:{port}: {type(exc).__name__}"
            )
        return component(
            "postgres", HEALTHY, figures={"connect_ms": (time.perf_counter() - started) * 1000}
        )

    def _host_health(self) -> ComponentHealth:
        cpu = psutil.cpu_percent(interval=None)
        memory = psutil.virtual_memory().percent
        disk = psutil.disk_usage(str(self._disk_path)).percent
        worst = max(memory, disk)
        figures = {"cpu_pct": cpu, "memory_pct": memory, "disk_pct": disk}
        if worst >= HOST_CRITICAL_PCT:
            return component("host", CRITICAL, f"memory {memory}% / disk {disk}% used", figures)
        if worst >= HOST_DEGRADED_PCT or cpu >= HOST_CRITICAL_PCT:
            return component(
                "host", DEGRADED, f"cpu {cpu}% / memory {memory}% / disk {disk}% used", figures
            )
        return component("host", HEALTHY, figures=figures)
