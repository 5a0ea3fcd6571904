"""The publisher that goes with a client: ``EventBus`` on one Redis, the cluster engine's
``ClusterEventBus`` on a Redis Cluster (what ``open_client`` returns for its URL).

For a process that holds a client but no engine, the control plane standing alone, say,
which publishes replay outputs and redriven letters.
"""

from __future__ import annotations

from typing import cast

from redis.asyncio.cluster import RedisCluster

from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.client import RedisClient, is_cluster
from runtime.adapters.redis.cluster.engine import RedisClusterEngine
from runtime.adapters.redis.cluster.streams import ClusterEventBus
from runtime.core.keys import Keyspace
from runtime.core.partitioning import Partitioning

StreamPublisher = EventBus | ClusterEventBus


def open_publisher(
    redis: RedisClient,
    keyspace: Keyspace,
    *,
    producer: str,
    partitioning: Partitioning | None = None,
) -> StreamPublisher:
    """A publisher on ``redis``'s streams of ``keyspace``, each type split by
    ``partitioning``; the caller closes it (the client stays open)."""
    if is_cluster(redis):
        engine = RedisClusterEngine(cast(RedisCluster, redis), keyspace, partitioning=partitioning)
        return engine.publisher(producer=producer)
    return EventBus(redis, keyspace, producer=producer, partitioning=partitioning)


def maxlen_of(publisher: object, topic: str) -> int | None:
    """The length limit ``publisher`` keeps ``topic``'s stream to, or None when it is not a
    publisher of this adapter."""
    if isinstance(publisher, EventBus | ClusterEventBus):
        return publisher.names.of(topic)[1]
    return None
