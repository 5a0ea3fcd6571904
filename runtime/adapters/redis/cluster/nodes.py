"""Which master serves a key, and a lean connection per master for the hot path.

redis-py's asyncio ``RedisCluster`` keeps the slot map (``CLUSTER SLOTS``) and follows MOVED
and ASK for the commands sent through it (administration: groups, claims, scripts, reads for
operators). The hot path (XADD, XREADGROUP, SMISMEMBER, a commit's MULTI/EXEC, XACK) goes over
``RespConnection``s of its own, one per master per user, addressed by that slot map.

A reply that says the map is stale (MOVED, ASK, CLUSTERDOWN) or a lost connection marks it
stale (``note``); the caller's retry (the delivery loop and the publisher retry transient
errors) then reloads it first (``ready``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from redis.asyncio.cluster import RedisCluster

from runtime.adapters.redis.cluster.keys import slot_of
from runtime.adapters.redis.errors import is_transient
from runtime.adapters.redis.resp import DEFAULT_TIMEOUT_S, Endpoint, RespConnection


class ClusterRouter:
    """The slot map of one cluster client, refreshed when a reply says it is stale."""

    def __init__(self, client: RedisCluster, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.client = client
        self.timeout_s = timeout_s  # of a hot-path reply
        self._stale = False
        self._initialized = False
        self._lock = asyncio.Lock()
        self._slots: dict[str, int] = {}

    async def ready(self) -> None:
        """Initialize the client once (slot map and command table: redis-py routes by the
        latter, and a command sent while another task initializes can be misrouted), and
        reload the slot map when it went stale."""
        if self._initialized and not self._stale:
            return
        async with self._lock:
            if not self._initialized:
                await self.client.initialize()
                self._initialized = True
            if self._stale:
                await self.client.nodes_manager.initialize()
                self._stale = False

    def note(self, exc: BaseException) -> None:
        """Called with a failed hot-path call's error: a transient one may mean the slots
        moved, so the map is reloaded before the next call."""
        if is_transient(exc):
            self._stale = True

    def slot(self, key: str) -> int:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = slot_of(key)
        return slot

    def node_of(self, key: str) -> str:
        """The name ("host:port") of the master serving ``key``."""
        node = self.client.get_node_from_key(key)
        assert node is not None
        return str(node.name)

    def endpoint(self, name: str) -> Endpoint:
        node = self.client.get_node(node_name=name)
        if node is None:
            raise ConnectionError(f"no node {name} in the Redis Cluster's slot map")
        kwargs = node.connection_kwargs
        return Endpoint(
            host=str(node.host),
            port=int(node.port),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            connect_timeout_s=float(kwargs.get("socket_connect_timeout") or 5.0),
        )

    def connections(self) -> NodeConnections:
        """A set of lean connections, one per master, for one user (not shared: a commit's
        WATCH needs a connection nobody else writes to)."""
        return NodeConnections(self, timeout_s=self.timeout_s)

    def by_node(self, keys: Iterable[str]) -> dict[str, list[str]]:
        """``keys`` grouped by the master serving them, each group in the given order."""
        groups: dict[str, list[str]] = {}
        for key in keys:
            groups.setdefault(self.node_of(key), []).append(key)
        return groups


class NodeConnections:
    """One ``RespConnection`` per master, made on first use."""

    def __init__(self, router: ClusterRouter, *, timeout_s: float) -> None:
        self.router = router
        self.timeout_s = timeout_s
        self._conns: dict[str, RespConnection] = {}

    def to(self, node: str) -> RespConnection:
        conn = self._conns.get(node)
        if conn is None:
            conn = self._conns[node] = RespConnection(
                self.router.endpoint(node), timeout_s=self.timeout_s
            )
        return conn

    def of(self, key: str) -> RespConnection:
        """The connection to the master serving ``key``."""
        return self.to(self.router.node_of(key))

    async def close(self) -> None:
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            await conn.close()
