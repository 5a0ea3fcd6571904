"""Shared fixtures: a real Redis, and a private namespace per test that is cleaned up after."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

from runtime.core.keys import Keyspace
from runtime.core.redis_server import RedisServer, redis_url, start_redis_server


@pytest.fixture(autouse=True)
def _no_caller_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never depend on the caller's QUANTUM_* variables (tokens, TLS files, emit
    versions, addresses): each test starts without them and sets what it needs."""
    for name in list(os.environ):
        if name.startswith("QUANTUM_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """REDIS_URL, else the local default, else a private redis-server for the session."""
    with redis_url() as url:
        yield url


@pytest.fixture
def keyspace(redis_server_url: str) -> Iterator[Keyspace]:
    """A namespace no other test uses; every key under it is deleted after the test."""
    space = Keyspace(namespace=f"test-{uuid.uuid4().hex[:12]}")
    yield space
    client = redis.Redis.from_url(redis_server_url)
    try:
        keys = list(client.scan_iter(match=space.pattern(), count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture
async def aredis(redis_server_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio Redis client on the shared test Redis."""
    client = aioredis.Redis.from_url(redis_server_url)
    yield client
    await client.aclose()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own (append-only), for tests that stop or restart it."""
    server = start_redis_server(appendonly=True)
    yield server
    server.stop()
