"""The server's edges: trace context from metadata, deadlines, metrics, TLS and mutual TLS."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc import aio
from quantum.control.v1 import policy_service_pb2 as policy_pb
from quantum.control.v1 import trace_service_pb2 as trace_pb
from quantum.control.v1.policy_service_pb2_grpc import PolicyServiceStub
from quantum.control.v1.trace_service_pb2_grpc import TraceServiceStub
from quantum.events.v1 import policy_pb2

from clients.control_client import ControlClient, TlsOptions
from control_plane.config import ConfigError, ControlPlaneConfig, TlsConfig
from control_plane.server import ControlPlane
from runtime.adapters.redis.operator_store import RedisOperatorStore
from runtime.adapters.redis.policy_store import PolicyStore
from runtime.core import tracing
from runtime.core.envelope import decode_envelope
from runtime.core.keys import Keyspace
from runtime.core.redis_server import free_port
from tests.control_plane.conftest import Harness, start_harness, stop_harness
from tests.control_plane.support import wait_until


async def test_a_write_continues_the_callers_trace(harness: Harness) -> None:
    caller = tracing.new_trace()
    await PolicyServiceStub(harness.channel).SwitchMode(
        policy_pb.SwitchModeRequest(mode=policy_pb2.RISK_MODE_DEFENSIVE, reason="traced"),
        metadata=(*harness.operator, *tracing.to_grpc_metadata(caller)),
    )
    entries = await harness.redis.xrevrange(harness.keyspace.stream("policy.updated"), count=1)
    envelope = decode_envelope(entries[0][1][b"envelope"])
    assert envelope.trace_id == caller.trace_id
    assert envelope.span_id != caller.span_id


async def test_a_stream_past_its_deadline_ends_and_is_cleaned_up(harness: Harness) -> None:
    call = TraceServiceStub(harness.channel).SubscribeTraces(
        trace_pb.SubscribeTracesRequest(), metadata=harness.viewer, timeout=0.5
    )
    with pytest.raises(aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until(lambda: harness.plane.live_feed.subscriber_count == 0)


async def test_metrics_endpoint_serves_runtime_and_policy_figures(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    h = await start_harness(aredis, keyspace, tmp_path, metrics_addr="127.0.0.1:0")
    try:
        assert h.plane.metrics is not None
        url = f"http://127.0.0.1:{h.plane.metrics.port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        text = body.decode()
        assert "quantum_policy_version 1.0" in text
        assert 'quantum_policy_mode{mode="NORMAL"} 1.0' in text
        assert "# TYPE quantum_events_published_total counter" in text
    finally:
        await stop_harness(h)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=test-ca",
        "-days",
        "1",
    )
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", "san.ext",
        )  # fmt: skip
    return {p.stem + p.suffix: p for p in folder.iterdir()}


async def test_mutual_tls_admits_only_clients_with_a_certificate(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    certs = await asyncio.to_thread(make_certificates, tmp_path)
    tls = TlsConfig(certs["server.crt"], certs["server.key"], client_ca=certs["ca.crt"])
    h = await start_harness(aredis, keyspace, tmp_path, tls=tls)
    try:
        with_cert = ControlClient(
            h.address,
            token=h.viewer_token,
            tls=TlsOptions(ca=certs["ca.crt"], cert=certs["client.crt"], key=certs["client.key"]),
            retries=0,
        )
        async with with_cert:
            assert (await with_cert.get_policy()).version == 1
        without_cert = ControlClient(
            h.address, token=h.viewer_token, tls=TlsOptions(ca=certs["ca.crt"]), retries=0
        )
        async with without_cert:
            with pytest.raises(Exception, match="UNAVAILABLE"):
                await without_cert.get_policy()
    finally:
        await stop_harness(h)


async def test_the_client_retries_while_the_server_is_unavailable(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    async with ControlClient(address, retries=8, backoff_s=0.1) as client:
        pending = asyncio.create_task(client.get_policy())
        await asyncio.sleep(0.3)  # the first attempts fail: nothing listens yet
        h = await start_harness(aredis, keyspace, tmp_path, grpc_addr=address)
        try:
            # No token: the harness has tokens, so the call gets through the retries and
            # ends UNAUTHENTICATED, which is not retried.
            with pytest.raises(Exception, match="UNAUTHENTICATED"):
                await asyncio.wait_for(pending, 20)
        finally:
            await stop_harness(h)


async def test_a_failed_start_leaves_no_task_running(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    store = PolicyStore(aredis, keyspace, state_dir=tmp_path)
    await store.start()
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            addr = f"127.0.0.1:{taken.getsockname()[1]}"
            plane = ControlPlane(
                RedisOperatorStore(aredis, keyspace),
                keyspace,
                store,
                config=ControlPlaneConfig(grpc_addr=addr),
            )
            with pytest.raises(ConfigError, match="cannot listen"):
                await plane.start()
        watchers = [
            t for t in asyncio.all_tasks() if t.get_name() == "control-plane-serving-watcher"
        ]
        assert watchers == []
    finally:
        await store.stop()
