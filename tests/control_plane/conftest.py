"""An in-process control plane on the test Redis, with a viewer and an operator token."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from grpc import aio

from control_plane.auth import Role, TokenTable
from control_plane.config import ControlPlaneConfig, TlsConfig
from control_plane.server import ControlPlane
from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.operator_store import RedisOperatorStore
from runtime.adapters.redis.policy_store import PolicyStore
from runtime.core.actor import Actor
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from tests.process.actors import TickCounter

Metadata = tuple[tuple[str, str], ...]


@dataclass
class Harness:
    plane: ControlPlane
    store: PolicyStore
    bus: EventBus
    redis: aioredis.Redis
    keyspace: Keyspace
    channel: aio.Channel
    address: str
    viewer_token: str
    operator_token: str

    @property
    def viewer(self) -> Metadata:
        return (("authorization", f"Bearer {self.viewer_token}"),)

    @property
    def operator(self) -> Metadata:
        return (("authorization", f"Bearer {self.operator_token}"),)

    def as_role(self, role: str) -> Metadata | None:
        return {"none": None, "viewer": self.viewer, "operator": self.operator}[role]


async def start_harness(
    redis: aioredis.Redis,
    keyspace: Keyspace,
    state_dir: Path,
    *,
    queue_size: int = 1024,
    grpc_addr: str = "127.0.0.1:0",
    metrics_addr: str = "",
    tls: TlsConfig | None = None,
    domain_factories: Mapping[str, Callable[[], Actor]] | None = None,
) -> Harness:
    viewer_token, operator_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    tokens = TokenTable(
        [("vera", Role.VIEWER, viewer_token), ("otto", Role.OPERATOR, operator_token)]
    )
    store = PolicyStore(redis, keyspace, state_dir=state_dir)
    await store.start()
    bus = EventBus(redis, keyspace, producer="test", metrics=RuntimeMetrics())
    plane = ControlPlane(
        RedisOperatorStore(redis, keyspace),
        keyspace,
        store,
        config=ControlPlaneConfig(
            grpc_addr=grpc_addr,
            metrics_addr=metrics_addr,
            subscriber_queue_size=queue_size,
            tls=tls,
        ),
        tokens=tokens,
        domain_factories={"tick_counter": TickCounter, **(domain_factories or {})},
        publisher=bus,
    )
    port = await plane.start()
    address = f"127.0.0.1:{port}"
    channel = aio.insecure_channel(address)
    return Harness(
        plane, store, bus, redis, keyspace, channel, address, viewer_token, operator_token
    )


async def stop_harness(harness: Harness) -> None:
    # Bounded, so that a stuck step fails here, named, instead of at the pytest timeout.
    async with asyncio.timeout(30):
        await harness.channel.close()
        await harness.plane.stop(grace=0)
        await harness.bus.close()
        await harness.store.stop()


@pytest.fixture
async def harness(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> AsyncIterator[Harness]:
    async with asyncio.timeout(30):
        running = await start_harness(aredis, keyspace, tmp_path)
    yield running
    await stop_harness(running)
