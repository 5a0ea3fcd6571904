"""A domain partition on a Redis Cluster: the broker-neutral ``DeliveryLoop`` wired to this
adapter's subscription and committer."""

from __future__ import annotations

from runtime.adapters.redis.cluster.committer import ClusterCommitter
from runtime.adapters.redis.cluster.keys import ClusterKeyspace
from runtime.adapters.redis.cluster.nodes import ClusterRouter
from runtime.adapters.redis.cluster.streams import ClusterEventBus
from runtime.adapters.redis.cluster.subscription import ClusterSubscription
from runtime.core.actor import Actor
from runtime.core.delivery import DeliveryLoop, RunnerConfig, input_streams
from runtime.core.metrics import RuntimeMetrics
from runtime.core.registry import EventRegistry, default_registry
from runtime.core.trace_index import DEFAULT_MAX_TRACES


class ClusterDomainRunner(DeliveryLoop):
    """Runs one actor (one partition of its domain) on the cluster's streams."""

    def __init__(
        self,
        actor: Actor,
        router: ClusterRouter,
        keyspace: ClusterKeyspace,
        bus: ClusterEventBus,
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
            partitioning=keyspace.partitioning,
            partition=config.partition,
            partitions=config.partitions,
        )
        group = keyspace.group(actor.name, config.partition, config.partitions)
        # One consumer name per partition, whoever owns it (as on a single Redis): a new
        # owner reads what its predecessor left pending as its own, in order.
        subscription = ClusterSubscription(
            router,
            keyspace,
            group=group,
            consumer=f"{group}.owner",
            streams=streams,
            start_id=config.start_id,
        )
        committer = ClusterCommitter(
            router,
            keyspace,
            bus.names,
            bus.retention,
            domain=actor.name,
            partition=config.partition,
            partitions=config.partitions,
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
