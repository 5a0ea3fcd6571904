"""The event log on Redis Cluster: the single-Redis stream layout (``StreamNames``), each
topic's stream in its own slot, appends grouped per master and pipelined per master, the
masters written to concurrently."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from runtime.adapters.redis.cluster.keys import ClusterKeyspace
from runtime.adapters.redis.cluster.nodes import ClusterRouter, NodeConnections
from runtime.adapters.redis.errors import is_transient
from runtime.adapters.redis.retention import RetentionPolicy, StreamRetention
from runtime.adapters.redis.streams import RedisEventLog, StreamNames
from runtime.core.backoff import Backoff
from runtime.core.metrics import RuntimeMetrics
from runtime.core.publisher import DEFAULT_MAX_BATCH, DEFAULT_MAX_BUFFER, Publisher
from runtime.core.registry import EventRegistry


def cluster_retention(
    client: RedisCluster,
    policy: RetentionPolicy | None = None,
    *,
    metrics: RuntimeMetrics | None = None,
) -> StreamRetention:
    """The single-Redis retention on the cluster client: its per-stream reads and trims are
    keyed commands in a non-transactional pipeline, which redis-py routes per master."""
    return StreamRetention(cast(aioredis.Redis, client), policy, metrics=metrics)


class ClusterEventLog:
    """``EventLog`` on a Redis Cluster: XADDs grouped by the master of their stream."""

    def __init__(
        self, router: ClusterRouter, names: StreamNames, retention: StreamRetention
    ) -> None:
        self.router = router
        self.names = names
        self.retention = retention
        self._conns = router.connections()
        self._node_of_topic: dict[str, str] = {}

    async def append(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        names = self.names
        router = self.router
        try:
            await router.ready()
            await self.retention.make_room(names.appends(topic for topic, _ in items))
            per_node: dict[str, tuple[list[int], list[bytes]]] = {}
            for index, (topic, data) in enumerate(items):
                node = router.node_of(names.of(topic)[0])
                slot = per_node.get(node)
                if slot is None:
                    slot = per_node[node] = ([], [])
                slot[0].append(index)
                slot[1].append(names.xadd(topic, data))
            nodes = list(per_node)
            replies = await asyncio.gather(
                *(
                    self._conns.to(node).send_packed(
                        b"".join(per_node[node][1]), len(per_node[node][1])
                    )
                    for node in nodes
                )
            )
        except Exception as exc:
            router.note(exc)
            raise
        ids = [""] * len(items)
        for node, node_replies in zip(nodes, replies, strict=True):
            try:
                node_ids = RedisEventLog.ids_of(node_replies)
            except Exception as exc:
                router.note(exc)
                raise
            for index, entry_id in zip(per_node[node][0], node_ids, strict=True):
                ids[index] = entry_id
        return ids

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    async def close(self) -> None:
        """Trim what this process appended to its streams' history (``settle``), then close."""
        try:
            await self.retention.settle()
        finally:
            await self._conns.close()


class ClusterEventBus(Publisher):
    """The publisher of a cluster engine: batching, retries and a bounded buffer over a
    ``ClusterEventLog``; ``names`` and ``retention`` are shared with its runners' outputs."""

    def __init__(
        self,
        router: ClusterRouter,
        keyspace: ClusterKeyspace,
        *,
        producer: str = "",
        registry: EventRegistry | None = None,
        maxlen: int,
        maxlen_per_stream: Mapping[str, int] | None = None,
        retention: RetentionPolicy | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        max_batch: int = DEFAULT_MAX_BATCH,
        backoff: Backoff | None = None,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        self.router = router
        self.keyspace = keyspace
        self.names = StreamNames(
            keyspace,
            maxlen=maxlen,
            maxlen_per_stream=maxlen_per_stream,
            partitioning=keyspace.partitioning,
        )
        self.retention = cluster_retention(router.client, retention, metrics=metrics)
        super().__init__(
            ClusterEventLog(router, self.names, self.retention),
            producer=producer,
            registry=registry,
            max_buffer=max_buffer,
            max_batch=max_batch,
            backoff=backoff,
            metrics=metrics,
            partitioning=keyspace.partitioning,
        )

    async def close(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        try:
            await super().close(timeout)
        finally:
            await self.log.close()


__all__ = ["ClusterEventBus", "ClusterEventLog", "NodeConnections", "cluster_retention"]
