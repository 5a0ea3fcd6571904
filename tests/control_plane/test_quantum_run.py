"""The control plane served by ``quantum run``: real domains, real events, one trace end to end."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clients.control_client import ControlClient
from runtime.core.keys import Keyspace
from runtime.core.redis_server import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
async def quantum_run(
    redis_server_url: str, keyspace: Keyspace, tmp_path: Path
) -> AsyncIterator[str]:
    address = f"127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runtime.cli",
        "run",
        "--duration",
        "60",
        "--redis-url",
        redis_server_url,
        "--namespace",
        keyspace.namespace,
        "--state-dir",
        str(tmp_path),
        "--grpc-addr",
        address,
        "--metrics-addr",
        "",
        "--log-level",
        "WARNING",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield address
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_a_risk_decision_can_be_followed_back_to_its_tick(quantum_run: str) -> None:
    async with ControlClient(quantum_run, retries=12, backoff_s=0.2) as client:
        assert (await client.get_policy()).version >= 1
        decision = None
        async with asyncio.timeout(45):
            async for event in client.follow(
                event_types=["risk.signal.approved", "risk.signal.rejected"]
            ):
                decision = event
                break
        assert decision is not None
        trace = await client.get_trace(decision.envelope.trace_id)
        by_id = {e.envelope.event_id: e.envelope for e in trace}
        assert decision.envelope.event_id in by_id
        chain = [by_id[decision.envelope.event_id]]
        while chain[-1].causation_id:
            chain.append(by_id[chain[-1].causation_id])
        assert [e.event_type for e in reversed(chain)] == [
            "market.tick",
            "ai.signal.generated",
            decision.envelope.event_type,
        ]
        assert [e.producer for e in reversed(chain)] == ["market_data", "ai_engine", "risk_safety"]
        position = {e.envelope.event_id: index for index, e in enumerate(trace)}
        for event in trace:  # every cause comes before its effects
            cause = event.envelope.causation_id
            assert cause not in position or position[cause] < position[event.envelope.event_id]

        domains = {d.name: d for d in await client.list_domains()}
        for name in ("ai_engine", "risk_safety", "execution", "portfolio", "analytics"):
            assert domains[name].state == "RUNNING", name
            assert domains[name].groups, name
        health = await client.system_health()
        statuses = {c.name: c.status for c in health.components}
        assert statuses["redis"] == 1  # HEALTHY
        assert statuses["domain:risk_safety"] in (1, 2)
