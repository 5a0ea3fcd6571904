"""Redis (one server) as an ``Engine``: what the composition root and the conformance suite
build publishers and runners from, and read stored events, dead letters and state through."""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio as aioredis

from runtime.adapters.redis.bus import DEFAULT_MAXLEN, ENVELOPE_FIELD, EventBus
from runtime.adapters.redis.retention import RetentionPolicy
from runtime.adapters.redis.runner import DomainRunner
from runtime.core.actor import Actor
from runtime.core.dead_letters import DeadLetter
from runtime.core.delivery import DeliveryLoop, RunnerConfig
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
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
        entries = await self._range(self.keyspace.stream(topic), count)
        return [(entry_id, fields.get(ENVELOPE_FIELD, b"")) for entry_id, fields in entries]

    async def dead_letters(self, domain: str, *, count: int = 10_000) -> list[DeadLetter]:
        entries = await self._range(self.keyspace.dlq(domain), count)
        return [DeadLetter.from_fields(entry_id, fields) for entry_id, fields in entries]

    async def load_state(
        self, domain: str, partition: int = 0, partitions: int = 1
    ) -> bytes | None:
        data: bytes | None = await self.redis.get(  # type: ignore[assignment]
            self.keyspace.state(domain, partition, partitions)
        )
        return data

    async def _range(self, key: str, count: int) -> list[tuple[str, dict[bytes, bytes]]]:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await self.redis.xrange(  # type: ignore[assignment]
            key, count=count
        )
        return [(entry_id.decode(), fields) for entry_id, fields in entries]

    async def close(self) -> None:
        if self._owns_client:
            await self.redis.aclose()
