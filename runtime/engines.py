"""The composition root's choice of engine: one URL names the broker (DESIGN section 4).

- ``redis://``, ``rediss://``, ``unix://``: one Redis server (``runtime.adapters.redis``);
- ``redis+cluster://host:port[,host:port...]``: a Redis Cluster, from any of its nodes
  (``runtime.adapters.redis.cluster``);
- ``nats://``, ``tls://``: NATS with JetStream (``runtime.adapters.nats``);
- ``memory://``: the in-memory engine of this process (tests, backtests).

Everything above the engine (domains, delivery loop, publisher, host) is the same code on
each; only this choice and the partition counts change between deployments.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from runtime.core.engine import Engine
from runtime.core.keys import Keyspace
from runtime.core.operator_store import OperatorStore
from runtime.core.partitioning import Partitioning
from runtime.core.policy.ports import PolicyService

REDIS_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEME = "redis+cluster"
NATS_SCHEMES = ("nats", "tls")
SCHEMES = (*REDIS_SCHEMES, CLUSTER_SCHEME, *NATS_SCHEMES, "memory")


class UnknownEngine(ValueError):
    """A URL no engine answers to."""


def engine_kind(url: str) -> str:
    """Which engine a URL selects: "redis", "redis_cluster", "jetstream" or "memory";
    UnknownEngine otherwise."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in REDIS_SCHEMES:
        return "redis"
    if scheme == CLUSTER_SCHEME:
        return "redis_cluster"
    if scheme in NATS_SCHEMES:
        return "jetstream"
    if scheme == "memory":
        return "memory"
    raise UnknownEngine(
        f"no engine for {url.split('://', 1)[0]!r} URLs; use one of "
        + ", ".join(f"{s}://" for s in SCHEMES)
    )


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """How an engine keeps its logs, the same words on every engine (each applies what it
    has: a Redis stream's length ceiling, a JetStream stream's per-subject limit).

    ``maxlen``: a topic's unread backlog, at which publishers wait (backpressure);
    ``retain``: read entries kept as history; ``backpressure_timeout_s``: how long a publish
    waits for room before it fails; ``max_traces``: traces kept in the trace index.
    None: the engine's default.
    """

    maxlen: int | None = None
    retain: int | None = None
    backpressure_timeout_s: float | None = None
    max_traces: int | None = None


def open_engine(
    url: str,
    keyspace: Keyspace,
    *,
    partitioning: Partitioning | None = None,
    settings: EngineSettings | None = None,
) -> Engine:
    """The engine ``url`` names, with its own client (closed by ``Engine.close``), its logs
    sized by ``settings``."""
    settings = settings or EngineSettings()
    kind = engine_kind(url)
    if kind == "memory":
        from runtime.adapters.memory.broker import MemoryBroker
        from runtime.adapters.memory.engine import MemoryEngine

        return MemoryEngine(MemoryBroker(keyspace, partitioning=partitioning))
    if kind == "jetstream":
        from runtime.adapters.nats.engine import JetStreamEngine
        from runtime.adapters.nats.retention import (
            DEFAULT_BACKPRESSURE_TIMEOUT_S,
            DEFAULT_CEILING,
            DEFAULT_RETAIN,
        )
        from runtime.adapters.nats.retention import RetentionPolicy as JetStreamRetention

        return JetStreamEngine.from_url(
            url,
            keyspace,
            partitioning=partitioning,
            retention=JetStreamRetention(
                retain=settings.retain or DEFAULT_RETAIN,
                ceiling=settings.maxlen or DEFAULT_CEILING,
                backpressure_timeout_s=settings.backpressure_timeout_s
                or DEFAULT_BACKPRESSURE_TIMEOUT_S,
            ),
        )
    from runtime.adapters.redis.bus import DEFAULT_MAXLEN
    from runtime.adapters.redis.retention import RetentionPolicy
    from runtime.core.trace_index import DEFAULT_MAX_TRACES

    retention: RetentionPolicy | None = None
    if settings.retain is not None or settings.backpressure_timeout_s is not None:
        defaults = RetentionPolicy()
        retention = RetentionPolicy(
            retain=settings.retain or defaults.retain,
            backpressure_timeout_s=settings.backpressure_timeout_s
            or defaults.backpressure_timeout_s,
        )
    options = {
        "partitioning": partitioning,
        "maxlen": settings.maxlen or DEFAULT_MAXLEN,
        "retention": retention,
        "max_traces": settings.max_traces or DEFAULT_MAX_TRACES,
    }
    if kind == "redis_cluster":
        from runtime.adapters.redis.cluster.engine import RedisClusterEngine

        return RedisClusterEngine.from_url(url, keyspace, **options)
    from runtime.adapters.redis.engine import RedisEngine

    return RedisEngine.from_url(url, keyspace, **options)


@dataclass
class OperatorSide:
    """What a process beside its engine needs to serve operators and summarise a run: the
    engine's ``OperatorStore`` and its PolicyStore. On Redis both use a client of their own
    (its timeouts are the caller's, the runners' connections stay theirs); on JetStream they
    share the engine's connection."""

    store: OperatorStore
    policy: PolicyService
    _close: Callable[[], Awaitable[None]] | None = None

    async def close(self) -> None:
        """Close what was opened for it (not the engine)."""
        if self._close is not None:
            await self._close()


def open_operator_side(
    url: str,
    engine: Engine,
    *,
    state_dir: Path,
    socket_timeout: float | None = None,
) -> OperatorSide:
    """The operator side of ``engine`` (opened from ``url``); ``state_dir`` keeps the Redis
    PolicyStore's snapshot (JetStream keeps the policy's history in its KV bucket)."""
    if engine.kind == "memory":
        engine.operator_store()  # raises OperationUnsupported, saying why
    if engine.kind == "jetstream":
        from runtime.adapters.nats.engine import JetStreamEngine

        assert isinstance(engine, JetStreamEngine)
        return OperatorSide(engine.operator_store(), engine.policy_store())
    from runtime.adapters.redis.client import open_client
    from runtime.adapters.redis.operator_store import RedisOperatorStore
    from runtime.adapters.redis.policy_store import PolicyStore

    redis = open_client(url, socket_connect_timeout=2.0, socket_timeout=socket_timeout)
    return OperatorSide(
        RedisOperatorStore(redis, engine.keyspace),
        PolicyStore(redis, engine.keyspace, state_dir=state_dir),
        redis.aclose,
    )
