"""The event bus on Redis: the broker-neutral ``Publisher`` over a ``RedisEventLog``."""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio as aioredis

from runtime.adapters.redis.errors import RETRYABLE_ERRORS, is_transient
from runtime.adapters.redis.retention import RetentionPolicy, StreamRetention
from runtime.adapters.redis.streams import (
    DEFAULT_MAXLEN,
    ENVELOPE_FIELD,
    RedisEventLog,
    StreamNames,
)
from runtime.core.backoff import Backoff
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from runtime.core.partitioning import Partitioning
from runtime.core.publisher import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BUFFER,
    BusClosed,
    PublishBufferFull,
    Publisher,
    PublishTimeout,
)
from runtime.core.registry import EventRegistry

__all__ = [
    "DEFAULT_MAXLEN",
    "ENVELOPE_FIELD",
    "RETRYABLE_ERRORS",
    "BusClosed",
    "EventBus",
    "PublishBufferFull",
    "PublishTimeout",
    "is_transient",
]


class EventBus(Publisher):
    """Publishes events to ``<namespace>:stream:<topic>`` with batching and retries (a topic:
    the event type, or its partition for the event's key when the type is partitioned).

    ``maxlen`` (per stream: ``maxlen_per_stream``) is the length limit of a stream's unread
    backlog: at it, publishes wait for the slowest consumer group (backpressure), never
    trimming what a group has not read; ``retention`` says how much history is kept.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keyspace: Keyspace,
        *,
        producer: str = "",
        registry: EventRegistry | None = None,
        maxlen: int = DEFAULT_MAXLEN,
        maxlen_per_stream: Mapping[str, int] | None = None,
        retention: RetentionPolicy | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        max_batch: int = DEFAULT_MAX_BATCH,
        linger_ms: float = 0.0,
        backoff: Backoff | None = None,
        metrics: RuntimeMetrics | None = None,
        partitioning: Partitioning | None = None,
    ) -> None:
        self.redis = redis
        self.keyspace = keyspace
        self.names = StreamNames(
            keyspace,
            maxlen=maxlen,
            maxlen_per_stream=maxlen_per_stream,
            partitioning=partitioning,
        )
        self.retention = StreamRetention(redis, retention, metrics=metrics)
        super().__init__(
            RedisEventLog(redis, self.names, self.retention),
            producer=producer,
            registry=registry,
            max_buffer=max_buffer,
            max_batch=max_batch,
            linger_ms=linger_ms,
            backoff=backoff,
            metrics=metrics,
            partitioning=partitioning,
        )

    @property
    def maxlen(self) -> int:
        """The default length ceiling of a stream (MAXLEN ~)."""
        return self.names.maxlen

    @maxlen.setter
    def maxlen(self, value: int) -> None:
        self.names = StreamNames(
            self.keyspace,
            maxlen=value,
            maxlen_per_stream=self.names.per_stream,
            partitioning=self.partitioning,
        )
        assert isinstance(self.log, RedisEventLog)
        self.log.names = self.names

    def maxlen_of(self, topic: str) -> int:
        """The length limit of a topic's stream (its unread backlog's ceiling)."""
        return self.names.of(topic)[1]

    async def close(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        try:
            await super().close(timeout)
        finally:
            await self.log.close()
