"""Redis (one server) as an ``Engine``: what the composition root and the conformance suite
build publishers and runners from, and read stored events, dead letters and state through."""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio as aioredis

from runtime.adapters.redis.bus import DEFAULT_MAXLEN, EventBus
from runtime.adapters.redis.client import RedisClient
from runtime.adapters.redis.operator_store import RedisOperatorStore
from runtime.adapters.redis.retention import RetentionPolicy
from runtime.adapters.redis.runner import DomainRunner
from runtime.core.actor import Actor
from runtime.core.dead_letters import DeadLetter
from runtime.core.delivery import DeliveryLoop, RunnerConfig
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from runtime.core.operator_store import read_letters, read_log
from runtime.core.partitioning import UNPARTITIONED, Partitioning
from runtime.core.publisher import Publisher
from runtime.core.trace_index import DEFAULT_MAX_TRACES


class RedisEngine:
    """One Redis server: streams per topic, groups per domain partition, MULTI/EXEC commits."""

    kind = "redis"

    def __init__(
        self,
        redis: aioredis.Redis,
        keyspace: Keyspace,
        *,
        partitioning: Partitioning | None = None,
        maxlen: int = DEFAULT_MAXLEN,
        maxlen_per_stream: Mapping[str, int] | None = None,
        retention: RetentionPolicy | None = None,
        max_traces: int = DEFAULT_MAX_TRACES,
        owns_client: bool = False,
    ) -> None:
        self.redis = redis
        self.max_traces = max_traces
        self.keyspace = keyspace
        self.partitioning = partitioning or UNPARTITIONED
        self.maxlen = maxlen
        self.maxlen_per_stream = dict(maxlen_per_stream or {})
        self.retention = retention
        self._owns_client = owns_client

    @classmethod
    def from_url(cls, url: str, keyspace: Keyspace, **options: object) -> RedisEngine:
        """An engine on the Redis at ``url`` (redis://, rediss:// or unix://), owning its
        client."""
        return cls(aioredis.Redis.from_url(url), keyspace, owns_client=True, **options)  # type: ignore[arg-type]

    def publisher(self, *, producer: str = "", metrics: RuntimeMetrics | None = None) -> EventBus:
        return EventBus(
            self.redis,
            self.keyspace,
            producer=producer,
            maxlen=self.maxlen,
            maxlen_per_stream=self.maxlen_per_stream,
            retention=self.retention,
            metrics=metrics,
            partitioning=self.partitioning,
        )

    def runner(
        self,
        actor: Actor,
        config: RunnerConfig,
        publisher: Publisher,
        *,
        metrics: RuntimeMetrics | None = None,
    ) -> DeliveryLoop:
        if not isinstance(publisher, EventBus):
            raise TypeError(f"a Redis runner needs this engine's publisher; got {publisher!r}")
        return DomainRunner(
            actor,
            self.redis,
            self.keyspace,
            publisher,
            config,
            metrics=metrics,
            max_traces=self.max_traces,
        )

    async def read(self, topic: str, *, count: int = 10_000) -> list[tuple[str, bytes]]:
        return await read_log(self.operator_store(), self.keyspace.stream(topic), count)

    async def dead_letters(self, domain: str, *, count: int = 10_000) -> list[DeadLetter]:
        return await read_letters(self.operator_store(), self.keyspace.dlq(domain), count)

    async def load_state(
        self, domain: str, partition: int = 0, partitions: int = 1
    ) -> bytes | None:
        return await load_state(self.redis, self.keyspace, domain, partition, partitions)

    def operator_store(self) -> RedisOperatorStore:
        return RedisOperatorStore(self.redis, self.keyspace)

    async def close(self) -> None:
        if self._owns_client:
            await self.redis.aclose()


# The stored state an Engine answers, the same on one Redis and on a cluster (whose client
# routes each key to its master): one place for both engines.


async def load_state(
    client: RedisClient, keyspace: Keyspace, domain: str, partition: int, partitions: int
) -> bytes | None:
    """The state snapshot a domain partition's last commit stored."""
    data = await client.get(keyspace.state(domain, partition, partitions))
    return data if isinstance(data, bytes) else None
