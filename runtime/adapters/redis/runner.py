"""A domain on Redis: the broker-neutral ``DeliveryLoop`` wired to this adapter's pieces.

``DomainRunner`` is what the composition root, the tests and the benchmarks build: an actor,
a Redis client (its URL also configures the lean hot-path connections), the keyspace, the
event bus (whose stream names and length ceilings the outputs share) and a ``RunnerConfig``.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.committer import RedisCommitter
from runtime.adapters.redis.subscription import RedisSubscription, group_name, state_key
from runtime.core.actor import Actor
from runtime.core.delivery import (
    DeliveryLoop,
    RunnerConfig,
    entry_order,
    input_streams,
    partition_of,
)
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from runtime.core.registry import EventRegistry, default_registry
from runtime.core.trace_index import DEFAULT_MAX_TRACES

__all__ = [
    "DomainRunner",
    "RunnerConfig",
    "entry_order",
    "group_name",
    "partition_of",
    "state_key",
]


class DomainRunner(DeliveryLoop):
    """Runs one actor on the Redis streams of the event types it handles."""

    def __init__(
        self,
        actor: Actor,
        redis: aioredis.Redis,
        keyspace: Keyspace,
        bus: EventBus,
        config: RunnerConfig,
        *,
        registry: EventRegistry | None = None,
        metrics: RuntimeMetrics | None = None,
        max_traces: int = DEFAULT_MAX_TRACES,
    ) -> None:
        registry = registry or default_registry()
        streams = input_streams(
            actor,
            keyspace.stream,
            registry,
            partitioning=bus.partitioning,
            partition=config.partition,
            partitions=config.partitions,
        )
        group = group_name(keyspace, actor.name, config.partition, config.partitions)
        self.redis = redis
        self.keyspace = keyspace
        self.bus = bus
        # One consumer name per partition slot, whoever owns it: a new owner reads what its
        # predecessor left pending as its own, in order, with the delivery counts it had.
        subscription = RedisSubscription(
            redis,
            keyspace,
            domain=actor.name,
            group=group,
            consumer=f"{group}.owner",
            streams=streams,
            start_id=config.start_id,
        )
        committer = RedisCommitter(
            redis,
            keyspace,
            bus.names,
            bus.retention,
            domain=actor.name,
            group=group,
            state_key=state_key(keyspace, actor.name, config.partition, config.partitions),
            lease_key=keyspace.lease(actor.name, config.partition, config.partitions),
            processed_ttl_s=config.processed_ttl_s,
            max_traces=max_traces,
        )
        super().__init__(
            actor,
            subscription,
            committer,
            config,
            group=group,
            registry=registry,
            metrics=metrics,
        )
