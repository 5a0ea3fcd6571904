"""Redis as the trust boundary: with the README's ACL file (``quantum redis-acl``) each domain's
user runs its domain and cannot write another domain's streams or state; URLs carry the user
and password, and ``rediss://`` speaks TLS."""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from quantum.events.v1.common_pb2 import Side
from quantum.events.v2 import ai_pb2 as ai_v2
from redis.exceptions import NoPermissionError

from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.policy_store import PolicyStore
from runtime.adapters.redis.runner import DomainRunner, RunnerConfig, state_key
from runtime.bootstrap import domain_streams
from runtime.core.envelope import seal
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from runtime.core.redis_server import RedisServer, free_port, start_redis_server
from runtime.domains.risk_safety import RiskSafety
from runtime.redis_acl import acl_file
from tests.control_plane.test_server_edges import make_certificates
from tests.integration.bus_support import running

KEYSPACE = Keyspace("quantum")
USERS = [*domain_streams(), "control_plane"]


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    return {user: secrets.token_urlsafe(24) for user in USERS}


@pytest.fixture(scope="module")
def acl_server(
    tmp_path_factory: pytest.TempPathFactory, passwords: dict[str, str]
) -> Iterator[tuple[RedisServer, Path]]:
    """A private redis-server on the ACL file, with a TLS port beside the plain one."""
    folder = tmp_path_factory.mktemp("acl")
    certificates = make_certificates(folder)
    path = folder / "users.acl"
    path.write_text(acl_file(KEYSPACE, domain_streams(), passwords))
    tls_port = free_port()
    server = start_redis_server(
        extra_args=[
            "--aclfile", str(path),
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(certificates["server.crt"]),
            "--tls-key-file", str(certificates["server.key"]),
            "--tls-ca-cert-file", str(certificates["ca.crt"]),
            "--tls-auth-clients", "no",
        ]
    )  # fmt: skip
    (folder / "tls_port").write_text(str(tls_port))
    yield server, folder
    server.stop()  # by its process (PID), started above


def url(server: RedisServer, user: str, passwords: dict[str, str]) -> str:
    return f"redis://{user}:{passwords[user]}@127.0.0.1:{server.port}/0"


@pytest.fixture
async def clients(
    acl_server: tuple[RedisServer, Path], passwords: dict[str, str]
) -> AsyncIterator[dict[str, aioredis.Redis]]:
    server, _ = acl_server
    made = {user: aioredis.Redis.from_url(url(server, user, passwords)) for user in USERS}
    admin = made["control_plane"]  # may not FLUSHDB (a dangerous command): deletes by key
    keys = [key async for key in admin.scan_iter(match=KEYSPACE.pattern())]
    if keys:
        await admin.delete(*keys)
    yield made
    for client in made.values():
        await client.aclose()


async def test_a_domain_user_writes_its_own_keys_and_no_one_elses(
    clients: dict[str, aioredis.Redis],
) -> None:
    risk = clients["risk_safety"]
    await risk.xadd(KEYSPACE.stream("risk.signal.approved"), {"envelope": b"x"})
    await risk.set(state_key(KEYSPACE, "risk_safety"), b"{}")
    await risk.xadd(KEYSPACE.dlq("risk_safety"), {"reason": b"invalid"})
    forbidden = [
        risk.xadd(KEYSPACE.stream("execution.order.filled"), {"envelope": b"forged"}),
        risk.xadd(KEYSPACE.stream("ai.signal.generated"), {"envelope": b"own input"}),
        risk.set(state_key(KEYSPACE, "portfolio"), b"{}"),
        risk.xadd(KEYSPACE.dlq("portfolio"), {"reason": b"x"}),
        risk.xrange(KEYSPACE.stream("execution.order.filled")),  # not one of its inputs
        risk.hset(KEYSPACE.policy(), "version", "99"),
        risk.set(KEYSPACE.state_epoch("risk_safety"), "7"),
        risk.execute_command("FLUSHALL"),  # type: ignore[no-untyped-call]
    ]
    for attempt in forbidden:
        with pytest.raises(NoPermissionError):
            await attempt
    ai = clients["ai_engine"]
    with pytest.raises(NoPermissionError):
        await ai.xadd(KEYSPACE.stream("risk.signal.approved"), {"envelope": b"forged"})
    await ai.xadd(KEYSPACE.stream("ai.signal.generated"), {"envelope": b"x"})


async def test_a_domain_runs_as_its_own_user(
    clients: dict[str, aioredis.Redis], tmp_path: Path
) -> None:
    admin = clients["control_plane"]
    setup = PolicyStore(admin, KEYSPACE, state_dir=tmp_path / "admin")
    await setup.start()  # the control plane initialises the policy
    await setup.stop()
    risk = clients["risk_safety"]
    store = PolicyStore(risk, KEYSPACE, state_dir=tmp_path / "risk")
    await store.start()  # reads only
    bus = EventBus(risk, KEYSPACE, producer="risk_safety", metrics=RuntimeMetrics())
    runner = DomainRunner(
        RiskSafety(store),
        risk,
        KEYSPACE,
        bus,
        RunnerConfig("risk-1", block_ms=50),
        metrics=RuntimeMetrics(),
    )
    signal = ai_v2.SignalGenerated(
        signal_id="sig-1",
        symbol="BTC-USD",
        side=Side.SIDE_BUY,
        reference_price="60000",
        confidence=ai_v2.Confidence(value="0.9"),
    )
    ai_bus = EventBus(
        clients["ai_engine"], KEYSPACE, producer="ai_engine", metrics=RuntimeMetrics()
    )
    try:
        async with running(runner):
            await ai_bus.publish_envelopes(
                [seal(signal, producer="ai_engine", partition_key="BTC-USD")]
            )
            approved = KEYSPACE.stream("risk.signal.approved")
            async with asyncio.timeout(10):
                while not await admin.xlen(approved):  # noqa: ASYNC110 (polling Redis)
                    await asyncio.sleep(0.02)
        assert await admin.get(state_key(KEYSPACE, "risk_safety"))
        assert await admin.xlen(KEYSPACE.dlq("risk_safety")) == 0
    finally:
        await ai_bus.close()
        await bus.close()
        await store.stop()


async def test_rediss_urls_speak_tls_with_a_user_and_password(
    acl_server: tuple[RedisServer, Path], passwords: dict[str, str]
) -> None:
    _, folder = acl_server
    port = int((folder / "tls_port").read_text())
    ca = folder / "ca.crt"
    client = aioredis.Redis.from_url(
        f"rediss://risk_safety:{passwords['risk_safety']}@127.0.0.1:{port}/0"
        f"?ssl_ca_certs={ca}&ssl_cert_reqs=required"
    )
    try:
        assert await client.ping()
        await client.set(state_key(KEYSPACE, "risk_safety"), b"{}")
        with pytest.raises(NoPermissionError):
            await client.set(state_key(KEYSPACE, "portfolio"), b"{}")
    finally:
        await client.aclose()


async def test_quantum_run_with_a_wrong_password_says_so_without_echoing_it(
    acl_server: tuple[RedisServer, Path], tmp_path: Path
) -> None:
    server, _ = acl_server
    wrong = secrets.token_urlsafe(16)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runtime.cli", "run", "--duration", "1", "--no-control-plane",
        "--redis-url", f"redis://risk_safety:{wrong}@127.0.0.1:{server.port}/0",
        "--state-dir", str(tmp_path), "--log-level", "ERROR",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    text = stderr.decode()
    assert "Redis refused this process's user" in text
    assert wrong not in text


def test_the_readme_shows_the_acl_file_quantum_redis_acl_prints() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    shown = [line for line in readme.splitlines() if line.startswith("user ")]
    printed = acl_file(KEYSPACE, domain_streams(), {}).splitlines()
    assert len(shown) >= 3
    assert set(shown) <= set(printed)
