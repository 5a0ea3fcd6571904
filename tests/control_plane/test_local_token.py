"""Writes always need an operator token: a server with none configured makes its own, kept in
its state directory for its owner only, and quantumctl on the same machine uses it."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc import aio
from quantum.control.v1 import policy_service_pb2 as pb
from quantum.control.v1 import replay_service_pb2 as replay_pb
from quantum.control.v1.policy_service_pb2_grpc import PolicyServiceStub
from quantum.control.v1.replay_service_pb2_grpc import ReplayServiceStub
from quantum.events.v1 import policy_pb2

from clients.control_client import local_token
from clients.wire_errors import details_of
from control_plane.auth import TokenTable
from control_plane.config import ControlPlaneConfig
from control_plane.server import ControlPlane
from runtime.adapters.redis.operator_store import RedisOperatorStore
from runtime.adapters.redis.policy_store import PolicyStore
from runtime.core.keys import Keyspace
from tests.control_plane.test_quantumctl import quantumctl
from tests.process.actors import TickCounter


class LocalServer:
    def __init__(self, plane: ControlPlane, store: PolicyStore, state_dir: Path) -> None:
        self.plane = plane
        self.store = store
        self.state_dir = state_dir
        self.address = f"127.0.0.1:{plane.port}"
        self.channel = aio.insecure_channel(self.address)


async def _start(redis: aioredis.Redis, keyspace: Keyspace, state_dir: Path) -> LocalServer:
    store = PolicyStore(redis, keyspace, state_dir=state_dir)
    await store.start()
    plane = ControlPlane(
        RedisOperatorStore(redis, keyspace),
        keyspace,
        store,
        config=ControlPlaneConfig(grpc_addr="127.0.0.1:0", metrics_addr="", state_dir=state_dir),
        tokens=TokenTable(),  # none configured
        domain_factories={"tick_counter": TickCounter},
    )
    await plane.start()
    return LocalServer(plane, store, state_dir)


async def _stop(server: LocalServer) -> None:
    async with asyncio.timeout(30):
        await server.channel.close()
        await server.plane.stop(grace=0)
        await server.store.stop()


@pytest.fixture
async def local(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> AsyncIterator[LocalServer]:
    server = await _start(aredis, keyspace, tmp_path / "state")
    yield server
    await _stop(server)


def test_the_token_file_is_private_to_its_owner(local: LocalServer) -> None:
    path = local.state_dir / "operator.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = local_token(local.state_dir)
    assert token is not None
    assert len(token) >= 32


async def test_without_a_token_reads_work_and_writes_are_refused(local: LocalServer) -> None:
    stub = PolicyServiceStub(local.channel)
    assert (await stub.GetPolicy(pb.GetPolicyRequest())).policy.version == 1
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.SwitchMode(
            pb.SwitchModeRequest(mode=policy_pb2.RISK_MODE_DEFENSIVE, reason="anonymous")
        )
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
    assert "operator.token" in details.message
    replay = ReplayServiceStub(local.channel)
    with pytest.raises(aio.AioRpcError) as redriven:
        await replay.RedriveDeadLetters(replay_pb.RedriveDeadLettersRequest(domain="tick_counter"))
    assert redriven.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert local.store.get_policy().version == 1


async def test_the_local_token_writes_as_operator_local(local: LocalServer) -> None:
    token = local_token(local.state_dir)
    stub = PolicyServiceStub(local.channel)
    response = await stub.SwitchMode(
        pb.SwitchModeRequest(mode=policy_pb2.RISK_MODE_DEFENSIVE, reason="drill"),
        metadata=(("authorization", f"Bearer {token}"),),
    )
    assert response.policy.updated_by == "operator:local"


async def test_quantumctl_on_the_same_machine_uses_the_local_token(local: LocalServer) -> None:
    code, _, err = await quantumctl(
        local,  # type: ignore[arg-type]
        "policy",
        "set-mode",
        "defensive",
        "--reason",
        "drill",
        state_dir=local.state_dir,
    )
    assert code == 0, err
    assert local.store.get_policy().updated_by == "operator:local"
    code, _, err = await quantumctl(local, "policy", "set-mode", "normal", "--reason", "x")  # type: ignore[arg-type]
    assert code == 1
    assert "TOKEN_MISSING" in err


async def test_a_restart_replaces_the_token(
    aredis: aioredis.Redis, keyspace: Keyspace, local: LocalServer
) -> None:
    first = local_token(local.state_dir)
    again = await _start(aredis, keyspace, local.state_dir)
    try:
        assert local_token(local.state_dir) not in (None, first)
    finally:
        await _stop(again)


def test_quantumctl_ignores_a_token_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "operator.token"
    path.write_text("x" * 43 + "\n")
    path.chmod(0o600)
    assert local_token(tmp_path) == "x" * 43
    path.chmod(0o644)
    assert local_token(tmp_path) is None
    assert local_token(tmp_path / "missing") is None
