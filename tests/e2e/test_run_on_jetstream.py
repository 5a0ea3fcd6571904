"""``quantum run`` on NATS JetStream (``nats://``), the control plane included.

A recorded feed, split in partitions, runs to its end and gives the backtest's signals and
the summary; a live run answers the control plane's calls from the broker: health (NATS and
every domain), the policy (a mode switch reaches the domains), ReadEvents, a trace through
the domains, the dead letters; Ctrl-C then drains, prints the summary and deletes the run's
own namespace. Refused credentials and a broker that does not answer are one clear line.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import nats as nats_client
import pytest
from quantum.control.v1 import policy_service_pb2 as policy_pb
from quantum.control.v1 import replay_service_pb2 as replay_pb
from quantum.control.v1 import runtime_service_pb2 as runtime_pb
from quantum.control.v1 import trace_service_pb2 as trace_pb
from quantum.control.v1.policy_service_pb2_grpc import PolicyServiceStub
from quantum.control.v1.replay_service_pb2_grpc import ReplayServiceStub
from quantum.control.v1.runtime_service_pb2_grpc import RuntimeServiceStub
from quantum.control.v1.trace_service_pb2_grpc import TraceServiceStub
from quantum.events.v1 import policy_pb2 as policy_model_pb
from quantum.events.v1.envelope_pb2 import Envelope

from control_plane.local_token import LOCAL_TOKEN_FILE
from runtime.adapters.nats.names import token
from runtime.backtest import run_backtest
from runtime.core.keys import Keyspace
from runtime.core.partitioning import Partitioning
from runtime.core.redis_server import free_port
from runtime.engines import open_engine
from tests.conformance.harness_jetstream import JetStreamHarness
from tests.e2e.quantum_process import (
    SUMMARY_TITLE,
    count,
    log_events,
    run_command,
    start,
    wait_for,
)
from tests.e2e.test_backtest_vs_run import FEED, SIGNALS, _by_symbol

pytestmark = pytest.mark.slow

SPLIT = "market.tick=3,ai.signal.generated=3"
HEALTHY = runtime_pb.HEALTH_STATUS_HEALTHY


@pytest.fixture(scope="module")
def nats() -> Iterator[JetStreamHarness]:
    started = JetStreamHarness()
    yield started
    started.stop()


async def _signals(url: str, namespace: str) -> list[Envelope]:
    partitioning = Partitioning.parse(SPLIT)
    engine = open_engine(url, Keyspace(namespace), partitioning=partitioning)
    try:
        return [
            Envelope.FromString(data)
            for topic in partitioning.topics(SIGNALS)
            for _, data in await engine.read(topic)
        ]
    finally:
        await engine.close()


def test_quantum_run_on_jetstream_gives_the_backtests_signals(
    nats: JetStreamHarness, tmp_path: Path
) -> None:
    namespace = "on-jetstream"
    command = run_command(
        nats.url,
        namespace,
        tmp_path,
        "--feed",
        str(FEED),
        "--speed",
        "max",
        "--stream-partitions",
        SPLIT,
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert SUMMARY_TITLE in result.stdout
    assert "control_plane_started" in result.stderr
    backtest = [
        e
        for e in asyncio.run(run_backtest(FEED, equity=Decimal(100_000))).events()
        if e.event_type == SIGNALS
    ]
    ticks = sum(1 for line in FEED.read_text().splitlines()[1:] if line.strip())
    assert count(result.stdout, "market.tick") == ticks
    assert count(result.stdout, SIGNALS) == len(backtest) > 0
    live = asyncio.run(_signals(nats.url, namespace))
    assert _by_symbol(live) == _by_symbol(backtest)


async def _operate(port: int, operator: str) -> dict[str, Any]:
    """What the control plane of the live run answers, call by call."""
    viewer = (("authorization", f"Bearer {operator}"),)
    found: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        runtime = RuntimeServiceStub(channel)
        # The domains beat once they run: wait (bounded) until each is HEALTHY.
        for _ in range(60):
            health = await runtime.GetSystemHealth(
                runtime_pb.GetSystemHealthRequest(), metadata=viewer
            )
            statuses = {c.name: c.status for c in health.components}
            domains = {n: s for n, s in statuses.items() if n.startswith("domain:")}
            if statuses.get("nats") == HEALTHY and domains and set(domains.values()) == {HEALTHY}:
                break
            await asyncio.sleep(0.5)
        found["health"] = statuses
        listed = await runtime.ListDomains(runtime_pb.ListDomainsRequest(), metadata=viewer)
        found["domains"] = {d.name: [g.group for g in d.groups] for d in listed.domains}

        policy = PolicyServiceStub(channel)
        before = await policy.GetPolicy(policy_pb.GetPolicyRequest(), metadata=viewer)
        switched = await policy.SwitchMode(
            policy_pb.SwitchModeRequest(
                mode=policy_model_pb.RISK_MODE_DEFENSIVE,
                expected_version=before.policy.version,
                reason="e2e on JetStream",
            ),
            metadata=viewer,
        )
        found["versions"] = (before.policy.version, switched.policy.version)
        found["mode"] = switched.policy.mode

        replay = ReplayServiceStub(channel)
        events = [
            response.event
            async for response in replay.ReadEvents(
                replay_pb.ReadEventsRequest(
                    range=replay_pb.EventRange(event_type="market.tick", limit=20)
                ),
                metadata=viewer,
            )
        ]
        found["ticks_read"] = events
        # A signal's trace begins at its tick: wait (bounded) for the first signal.
        signals: list[Any] = []
        for _ in range(60):
            signals = [
                response.event
                async for response in replay.ReadEvents(
                    replay_pb.ReadEventsRequest(
                        range=replay_pb.EventRange(event_type=SIGNALS, limit=1)
                    ),
                    metadata=viewer,
                )
            ]
            if signals:
                break
            await asyncio.sleep(0.5)
        found["trace"] = []
        if signals:
            trace = await TraceServiceStub(channel).GetTrace(
                trace_pb.GetTraceRequest(trace_id=signals[0].envelope.trace_id), metadata=viewer
            )
            found["trace"] = [e.envelope.event_type for e in trace.events]
        letters = await replay.ListDeadLetters(
            replay_pb.ListDeadLettersRequest(domain="risk_safety"), metadata=viewer
        )
        found["dead_letters"] = list(letters.dead_letters)
    return found


def test_the_control_plane_serves_a_live_run_on_jetstream(
    nats: JetStreamHarness, tmp_path: Path
) -> None:
    process = start(run_command(nats.url, None, tmp_path, "--rate", "200"))
    seen: list[dict[str, Any]] = []
    try:
        assert process.stderr is not None
        events = log_events(process.stderr)
        started = wait_for(events, lambda e: e.get("event") == "control_plane_started", 60, seen)
        wait_for(events, lambda e: e.get("event") == "run_started", 60, seen)
        operator = (tmp_path / LOCAL_TOKEN_FILE).read_text().strip()
        found = asyncio.run(_operate(int(started["port"]), operator))
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err[-3000:]
    health = found["health"]
    assert health["nats"] == HEALTHY, health
    for domain in ("ai_engine", "risk_safety", "execution", "portfolio", "analytics"):
        assert health[f"domain:{domain}"] == HEALTHY, health
        assert found["domains"][domain], found["domains"]
    before, after = found["versions"]
    assert after == before + 1
    assert found["mode"] == policy_model_pb.RISK_MODE_DEFENSIVE
    assert found["ticks_read"]
    assert all(e.envelope.event_type == "market.tick" for e in found["ticks_read"])
    assert found["trace"][0] == "market.tick"
    assert "ai.signal.generated" in found["trace"]
    assert found["dead_letters"] == []
    assert SUMMARY_TITLE in out
    assert count(out, "market.tick") > 0
    # The run's own namespace (none given) is deleted at its end: streams and buckets.
    fresh = next(e["namespace"] for e in seen if e.get("event") == "run_started")
    assert fresh.startswith("quantum-run-")
    assert asyncio.run(_streams_of(nats.url, fresh)) == []


async def _streams_of(url: str, namespace: str) -> list[str]:
    """The JetStream streams (KV buckets included) whose names begin with the namespace's."""
    prefix = token(namespace)
    connection = await nats_client.connect(url)
    try:
        streams = await connection.jetstream().streams_info()
        return sorted(
            info.config.name or ""
            for info in streams
            if (info.config.name or "").removeprefix("KV_").startswith(prefix)
        )
    finally:
        await connection.close()


def test_credentials_nats_refuses_are_named_at_once_without_the_password(
    tmp_path: Path,
) -> None:
    guarded = JetStreamHarness()
    try:
        guarded.args += ["--user", "alice", "--pass", "s3cret-pw"]
        guarded.restart()
        wrong = guarded.url.replace("nats://", "nats://alice:wrong-pw@")
        refused = subprocess.run(
            run_command(wrong, "guarded", tmp_path, "--duration", "5"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        right = guarded.url.replace("nats://", "nats://alice:s3cret-pw@")
        accepted = subprocess.run(
            run_command(right, "guarded", tmp_path, "--duration", "3", "--workers", "1"),
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    finally:
        guarded.stop()
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "refused this connection's credentials" in refused.stderr
    assert "wrong-pw" not in refused.stderr
    assert "Traceback" not in refused.stderr
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    assert SUMMARY_TITLE in accepted.stdout


@pytest.mark.parametrize("scheme", ["nats", "redis"])
def test_a_broker_that_does_not_answer_at_start_is_one_clear_line(
    scheme: str, tmp_path: Path
) -> None:
    url = f"{scheme}://127.0.0.1:{free_port()}"
    result = subprocess.run(
        run_command(url, None, tmp_path, "--duration", "3", "--workers", "1"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "is unreachable" in result.stderr
    assert "start it and retry" in result.stderr or "start Redis and retry" in result.stderr
    assert "Traceback" not in result.stderr
