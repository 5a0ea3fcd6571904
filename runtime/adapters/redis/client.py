"""The Redis client as the rest of the system names it: a type, how one is opened, a PING.

The control plane and the composition root hold a client and pass it around, but never
import redis-py themselves (import-linter): they name the client ``RedisClient`` and open
it with ``open_client``; every command they need is a function of ``reads`` or ``admin``.

A ``redis+cluster://`` URL opens redis-py's cluster client instead (``is_cluster`` tells
them apart): it routes each keyed command to the master of its slot, so the single-key reads
work unchanged; the few calls that a cluster spells differently (several streams in one
XREAD, MULTI/EXEC, SCAN) branch on it in ``reads`` and ``admin``. ``keyspace_for`` gives the
key names that go with a URL: hash-tagged ones on a cluster.
"""

from __future__ import annotations

from typing import TypeAlias, cast

import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster

from runtime.adapters.redis.cluster.keys import ClusterKeyspace
from runtime.adapters.redis.cluster.url import is_cluster_url, parse_cluster_url
from runtime.core.keys import Keyspace
from runtime.core.partitioning import Partitioning

# The asyncio client of redis-py, replying bytes (the control plane never asks for strings).
# A cluster client is typed as one too: its keyed commands take the same arguments.
RedisClient: TypeAlias = redis.asyncio.Redis


def open_client(
    url: str, *, socket_connect_timeout: float, socket_timeout: float | None = None
) -> RedisClient:
    """A client for ``url`` (redis://, rediss://, unix://, or redis+cluster://host:port[,...]
    for a Redis Cluster); connects on its first command."""
    if is_cluster_url(url):
        parsed = parse_cluster_url(url)
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in parsed.seeds],
            username=parsed.username,
            password=parsed.password,
            decode_responses=False,
            socket_connect_timeout=socket_connect_timeout,
            socket_timeout=socket_timeout,
        )
        return cast(RedisClient, cluster)
    if socket_timeout is None:
        return RedisClient.from_url(url, socket_connect_timeout=socket_connect_timeout)
    return RedisClient.from_url(
        url, socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout
    )


def is_cluster(redis: RedisClient | RedisCluster) -> bool:
    """True for redis-py's cluster client (``open_client`` of a ``redis+cluster://`` URL)."""
    return isinstance(redis, RedisCluster)


def keyspace_for(url: str, namespace: str, partitioning: Partitioning | None = None) -> Keyspace:
    """The key names of a system at ``url``: hash-tagged ones (``ClusterKeyspace``, its
    streams spread by ``partitioning``) for a Redis Cluster URL, the plain ones otherwise."""
    keyspace = Keyspace(namespace)
    if is_cluster_url(url):
        return ClusterKeyspace.of(keyspace, partitioning)
    return keyspace


async def ping(redis: RedisClient) -> None:
    """One PING; raises when Redis does not answer or refuses the client's user."""
    await redis.ping()
