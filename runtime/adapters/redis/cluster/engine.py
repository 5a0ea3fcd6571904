"""Redis Cluster as an ``Engine`` (kind ``redis_cluster``), selected by a
``redis+cluster://`` URL: streams spread over the masters by hash tags, groups per domain
partition, commits in three single-slot steps (``committer``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from redis.asyncio.cluster import ClusterNode, RedisCluster

from runtime.adapters.redis.client import RedisClient
from runtime.adapters.redis.cluster.keys import ClusterKeyspace
from runtime.adapters.redis.cluster.nodes import ClusterRouter
from runtime.adapters.redis.cluster.runner import ClusterDomainRunner
from runtime.adapters.redis.cluster.streams import ClusterEventBus
from runtime.adapters.redis.cluster.url import parse_cluster_url
from runtime.adapters.redis.engine import load_state
from runtime.adapters.redis.operator_store import RedisOperatorStore
from runtime.adapters.redis.retention import RetentionPolicy
from runtime.adapters.redis.streams import DEFAULT_MAXLEN
from runtime.core.actor import Actor
from runtime.core.dead_letters import DeadLetter
from runtime.core.delivery import DeliveryLoop, RunnerConfig
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from runtime.core.operator_store import read_letters, read_log
from runtime.core.partitioning import Partitioning
from runtime.core.publisher import Publisher
from runtime.core.trace_index import DEFAULT_MAX_TRACES


def cluster_client(url: str) -> RedisCluster:
    """redis-py's asyncio cluster client on the seeds of a ``redis+cluster://`` URL (bytes
    replies, as the adapters expect)."""
    parsed = parse_cluster_url(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in parsed.seeds],
        username=parsed.username,
        password=parsed.password,
        decode_responses=False,
    )


class RedisClusterEngine:
    """One Redis Cluster behind the transport interfaces."""

    kind = "redis_cluster"

    def __init__(
        self,
        client: RedisCluster,
        keyspace: Keyspace,
        *,
        partitioning: Partitioning | None = None,
        maxlen: int = DEFAULT_MAXLEN,
        maxlen_per_stream: Mapping[str, int] | None = None,
        retention: RetentionPolicy | None = None,
        max_traces: int = DEFAULT_MAX_TRACES,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.max_traces = max_traces
        self.router = ClusterRouter(client)
        self.cluster_keyspace = ClusterKeyspace.of(keyspace, partitioning)
        self.keyspace: Keyspace = self.cluster_keyspace
        self.partitioning = self.cluster_keyspace.partitioning
        self.maxlen = maxlen
        self.maxlen_per_stream = dict(maxlen_per_stream or {})
        self.retention = retention
        self._owns_client = owns_client

    @classmethod
    def from_url(cls, url: str, keyspace: Keyspace, **options: object) -> RedisClusterEngine:
        """An engine on the cluster a ``redis+cluster://`` URL names, owning its client."""
        return cls(cluster_client(url), keyspace, owns_client=True, **options)  # type: ignore[arg-type]

    def publisher(
        self, *, producer: str = "", metrics: RuntimeMetrics | None = None
    ) -> ClusterEventBus:
        return ClusterEventBus(
            self.router,
            self.cluster_keyspace,
            producer=producer,
            maxlen=self.maxlen,
            maxlen_per_stream=self.maxlen_per_stream,
            retention=self.retention,
            metrics=metrics,
        )

    def runner(
        self,
        actor: Actor,
        config: RunnerConfig,
        publisher: Publisher,
        *,
        metrics: RuntimeMetrics | None = None,
    ) -> DeliveryLoop:
        if not isinstance(publisher, ClusterEventBus):
            raise TypeError(
                f"a Redis Cluster runner needs this engine's publisher; got {publisher!r}"
            )
        return ClusterDomainRunner(
            actor,
            self.router,
            self.cluster_keyspace,
            publisher,
            config,
            metrics=metrics,
            max_traces=self.max_traces,
        )

    # The stored reads are the single-Redis engine's: the cluster client routes each key.
    async def read(self, topic: str, *, count: int = 10_000) -> list[tuple[str, bytes]]:
        return await read_log(self.operator_store(), self.keyspace.stream(topic), count)

    async def dead_letters(self, domain: str, *, count: int = 10_000) -> list[DeadLetter]:
        return await read_letters(self.operator_store(), self.keyspace.dlq(domain), count)

    async def load_state(
        self, domain: str, partition: int = 0, partitions: int = 1
    ) -> bytes | None:
        return await load_state(self._reads, self.keyspace, domain, partition, partitions)

    @property
    def _reads(self) -> RedisClient:
        return cast(RedisClient, self.client)

    def operator_store(self) -> RedisOperatorStore:
        return RedisOperatorStore(cast(RedisClient, self.client), self.cluster_keyspace)

    async def close(self) -> None:
        if self._owns_client:
            await self.client.aclose()
