"""What the conformance suite needs of an engine under test: a broker of its own, which it can
crash and restart, and ``Engine`` objects opened on it (one per simulated process).

Each engine has one ``Harness`` (``redis``, ``redis_cluster``, ``jetstream``); the suite's
``engine`` fixture is parametrized over them, so one test states one guarantee for all.
"""

from __future__ import annotations

import uuid
from typing import Protocol

from runtime.core.engine import Engine
from runtime.core.keys import Keyspace
from runtime.core.partitioning import Partitioning
from runtime.core.redis_server import RedisServer, start_redis_server

# What a harness's engine keeps of each log unless a test asks for less: all it appends.
KEEP_ALL = 1_000_000


class Harness(Protocol):
    """A broker this test started (on a free loopback port, in a temporary folder)."""

    kind: str

    @property
    def url(self) -> str:
        """The URL ``runtime.engines.open_engine`` (and ``quantum run --redis-url``) takes."""
        ...

    def open(
        self, namespace: str, partitioning: Partitioning | None = None, *, keep: int = KEEP_ALL
    ) -> Engine:
        """A new engine on this broker (a new client: as a new process would have), each of
        its logs kept to about ``keep`` entries (older ones trimmed)."""
        ...

    def kill(self) -> None:
        """Crash the broker at once (SIGKILL), keeping what it stored."""
        ...

    def restart(self) -> None:
        """Start it again after ``kill``, on the same port(s) and data."""
        ...

    def stop(self) -> None:
        """Stop it and remove its folder (only processes this harness started)."""
        ...


def new_namespace() -> str:
    return f"conf-{uuid.uuid4().hex[:10]}"


class RedisHarness:
    """One private redis-server, append-only with fsync always (a restart keeps everything)."""

    kind = "redis"

    def __init__(self) -> None:
        self.server: RedisServer = start_redis_server(appendonly=True)

    @property
    def url(self) -> str:
        return self.server.url

    def open(
        self, namespace: str, partitioning: Partitioning | None = None, *, keep: int = KEEP_ALL
    ) -> Engine:
        from runtime.adapters.redis.engine import RedisEngine
        from runtime.adapters.redis.retention import RetentionPolicy

        return RedisEngine.from_url(
            self.url,
            Keyspace(namespace),
            partitioning=partitioning,
            maxlen=keep,
            retention=RetentionPolicy(retain=keep),
        )

    def kill(self) -> None:
        self.server.kill()

    def restart(self) -> None:
        self.server.restart()

    def stop(self) -> None:
        self.server.stop()
