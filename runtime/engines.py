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

from urllib.parse import urlsplit

from runtime.core.engine import Engine
from runtime.core.keys import Keyspace
from runtime.core.partitioning import Partitioning

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


def open_engine(
    url: str,
    keyspace: Keyspace,
    *,
    partitioning: Partitioning | None = None,
    maxlen: int | None = None,
    retain: int | None = None,
) -> Engine:
    """The engine ``url`` names, with its own client (closed by ``Engine.close``).

    ``maxlen`` bounds a stream's unread backlog (publishers wait at it) and ``retain`` how
    many read entries are kept, on engines that have them.
    """
    kind = engine_kind(url)
    if kind == "memory":
        from runtime.adapters.memory.broker import MemoryBroker
        from runtime.adapters.memory.engine import MemoryEngine

        return MemoryEngine(MemoryBroker(keyspace, partitioning=partitioning))
    if kind == "jetstream":
        from runtime.adapters.nats.engine import JetStreamEngine
        from runtime.adapters.nats.retention import DEFAULT_CEILING, DEFAULT_RETAIN
        from runtime.adapters.nats.retention import RetentionPolicy as JetStreamRetention

        return JetStreamEngine.from_url(
            url,
            keyspace,
            partitioning=partitioning,
            retention=JetStreamRetention(
                retain=retain or DEFAULT_RETAIN, ceiling=maxlen or DEFAULT_CEILING
            ),
        )
    from runtime.adapters.redis.bus import DEFAULT_MAXLEN
    from runtime.adapters.redis.engine import RedisEngine
    from runtime.adapters.redis.retention import RetentionPolicy

    if kind == "redis_cluster":
        from runtime.adapters.redis.cluster.engine import RedisClusterEngine

        return RedisClusterEngine.from_url(
            url,
            keyspace,
            partitioning=partitioning,
            maxlen=maxlen or DEFAULT_MAXLEN,
            retention=None if retain is None else RetentionPolicy(retain=retain),
        )
    return RedisEngine.from_url(
        url,
        keyspace,
        partitioning=partitioning,
        maxlen=maxlen or DEFAULT_MAXLEN,
        retention=None if retain is None else RetentionPolicy(retain=retain),
    )
