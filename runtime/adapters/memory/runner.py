"""A domain on the in-memory broker: the broker-neutral ``DeliveryLoop`` wired to it, and a
``Publisher`` over its event log."""

from __future__ import annotations

from runtime.adapters.memory.broker import MemoryBroker
from runtime.adapters.memory.subscription import (
    MemoryCommitter,
    MemoryEventLog,
    MemorySubscription,
)
from runtime.core.actor import Actor
from runtime.core.backoff import Backoff
from runtime.core.delivery import DeliveryLoop, RunnerConfig, input_streams
from runtime.core.metrics import RuntimeMetrics
from runtime.core.publisher import Publisher
from runtime.core.registry import EventRegistry, default_registry


def group_name(broker: MemoryBroker, domain: str, partition: int = 0, partitions: int = 1) -> str:
    """The consumer group of a domain (of one of its partitions when it has several)."""
    return broker.keyspace.partition_group(domain, partition, partitions)


def state_key(broker: MemoryBroker, domain: str, partition: int = 0, partitions: int = 1) -> str:
    """Where the actor's state snapshot is kept."""
    return broker.keyspace.state(domain, partition, partitions)


class MemoryBus(Publisher):
    """Publishes envelopes to the in-memory broker, with the publisher's batching."""

    def __init__(
        self,
        broker: MemoryBroker,
        *,
        producer: str = "",
        registry: EventRegistry | None = None,
        backoff: Backoff | None = None,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        self.broker = broker
        super().__init__(
            MemoryEventLog(broker),
            producer=producer,
            registry=registry,
            backoff=backoff,
            metrics=metrics,
            partitioning=broker.partitioning,
        )


class MemoryRunner(DeliveryLoop):
    """Runs one actor on the in-memory streams of the event types it handles."""

    def __init__(
        self,
        actor: Actor,
        broker: MemoryBroker,
        config: RunnerConfig,
        *,
        registry: EventRegistry | None = None,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        registry = registry or default_registry()
        streams = input_streams(
            actor,
            broker.stream_of,
            registry,
            partitioning=broker.partitioning,
            partition=config.partition,
            partitions=config.partitions,
        )
        group = group_name(broker, actor.name, config.partition, config.partitions)
        self.broker = broker
        # One consumer name per partition slot, as on Redis: a new owner reads what its
        # predecessor left pending as its own, in order.
        subscription = MemorySubscription(
            broker,
            domain=actor.name,
            group=group,
            consumer=f"{group}.owner",
            streams=streams,
            start_id=config.start_id,
        )
        committer = MemoryCommitter(
            broker,
            domain=actor.name,
            group=group,
            state_key=state_key(broker, actor.name, config.partition, config.partitions),
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
