"""Clients in other languages against a live ``quantum run``: the Node client (TypeScript,
generated from proto/), ``buf curl`` and ``grpcurl`` (both schema-less: they learn the API
through server reflection). Each does what the README's operations section shows: list the
services, read the policy, switch mode with the expected version and a token, follow a trace.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from runtime.core.keys import Keyspace
from tests.control_plane.test_grpcurl import grpcurl_binary

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "node_modules" / ".bin" / "buf"
TSC = ROOT / "node_modules" / ".bin" / "tsc"
NODE_EXAMPLE = ROOT / "clients" / "node" / "dist" / "examples" / "control.js"

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class LiveSystem:
    address: str
    viewer_token: str
    operator_token: str

    def traceparent(self) -> tuple[str, str]:
        """A fresh trace id and a W3C traceparent that starts it."""
        trace_id = secrets.token_hex(16)
        return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


@pytest.fixture(scope="module")
def live(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSystem]:
    """``quantum run`` (all domains and the control plane) with a viewer and an operator token."""
    keyspace = Keyspace(namespace=f"test-{uuid.uuid4().hex[:12]}")
    workdir = tmp_path_factory.mktemp("quantum-run")
    viewer, operator = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    log_path = workdir / "stderr.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtime.cli",
                "run",
                "--redis-url",
                redis_server_url,
                "--namespace",
                keyspace.namespace,
                "--state-dir",
                str(workdir),
                "--grpc-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "",
                "--rate",
                "50",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={
                **os.environ,
                "QUANTUM_TOKENS": f"vera:viewer:{viewer},otto:operator:{operator}",
            },
        )
    try:
        port = _wait_for_port(log_path, process)
        yield LiveSystem(f"127.0.0.1:{port}", viewer, operator)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        client = redis.Redis.from_url(redis_server_url)
        try:
            keys = list(client.scan_iter(match=keyspace.pattern(), count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        finally:
            client.close()


def _wait_for_port(log_path: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"quantum run exited: {log_path.read_text()[-3000:]}")
        for line in log_path.read_text().splitlines():
            if '"control_plane_started"' in line:
                return int(json.loads(line)["port"])
        time.sleep(0.1)
    pytest.fail("quantum run did not start its control plane within 60 s")


@pytest.fixture(scope="module")
def node_example() -> Path:
    """The Node client and its example, compiled by tsc (type-checked against the schema)."""
    result = subprocess.run(
        [str(TSC), "-p", str(ROOT / "clients" / "node")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return NODE_EXAMPLE


def _run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def _follow_while_changing(
    follower: list[str], change: Callable[[], None], env: dict[str, str] | None = None
) -> str:
    """Run ``follower`` (a stream that ends by itself) and ``change`` until it has output."""
    process = subprocess.Popen(
        follower,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        # The follower subscribes asynchronously: change the policy until the stream sees it.
        for _ in range(8):
            change()
            try:
                out, _ = process.communicate(timeout=1.5)
                return out
            except subprocess.TimeoutExpired:
                continue
        out, err = process.communicate(timeout=30)
        return out + err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _policy_events(output: str, trace_id: str) -> list[dict[str, object]]:
    """policy.updated events of ``trace_id`` in a JSON (or JSON-lines) stream output."""
    decoder, events, index = json.JSONDecoder(), [], 0
    text = output.strip()
    while index < len(text):
        document, end = decoder.raw_decode(text, index)
        index = end
        while index < len(text) and text[index].isspace():
            index += 1
        event = document.get("event", document)
        envelope = event.get("envelope", {})
        # Proto JSON names (Node, buf curl) or field names (grpcurl).
        seen_trace = envelope.get("traceId", envelope.get("trace_id"))
        seen_type = envelope.get("eventType", envelope.get("event_type"))
        if seen_trace == trace_id and seen_type == "policy.updated":
            events.append(event)
    return events


# -- the Node client -----------------------------------------------------------------------


def test_node_client_reads_health_and_policy(live: LiveSystem, node_example: Path) -> None:
    env = {"QUANTUM_ADDR": live.address, "QUANTUM_TOKEN": live.viewer_token}

    health = _run(["node", str(node_example), "health"], env)
    policy = _run(["node", str(node_example), "get-policy"], env)

    assert health.returncode == 0, health.stderr
    report = json.loads(health.stdout)
    assert report["status"].startswith("HEALTH_STATUS_")
    assert {c["name"] for c in report["components"]} >= {"redis", "domain:risk_safety"}
    assert policy.returncode == 0, policy.stderr
    assert int(json.loads(policy.stdout)["version"]) >= 1


def test_node_client_switches_mode_with_the_expected_version(
    live: LiveSystem, node_example: Path
) -> None:
    viewer = {"QUANTUM_ADDR": live.address, "QUANTUM_TOKEN": live.viewer_token}
    operator = {"QUANTUM_ADDR": live.address, "QUANTUM_TOKEN": live.operator_token}
    current = json.loads(_run(["node", str(node_example), "get-policy"], viewer).stdout)
    version, target = int(current["version"]), _other_mode(current["mode"])
    mode = target.removeprefix("RISK_MODE_")

    as_viewer = _run(["node", str(node_example), "switch-mode", mode, str(version)], viewer)
    switched = _run(["node", str(node_example), "switch-mode", mode, str(version)], operator)
    stale = _run(["node", str(node_example), "switch-mode", mode, str(version)], operator)

    assert as_viewer.returncode == 1
    assert "PermissionDenied" in as_viewer.stderr
    assert switched.returncode == 0, switched.stderr
    policy = json.loads(switched.stdout)
    assert (int(policy["version"]), policy["mode"]) == (version + 1, target)
    assert stale.returncode == 1
    assert "Aborted" in stale.stderr


def test_node_client_follows_a_trace(live: LiveSystem, node_example: Path) -> None:
    trace_id, traceparent = live.traceparent()
    env = {"QUANTUM_ADDR": live.address, "QUANTUM_TOKEN": live.operator_token}
    modes = iter(["AGGRESSIVE", "NORMAL"] * 8)

    output = _follow_while_changing(
        ["node", str(node_example), "follow", "--trace-id", trace_id, "--limit", "1"],
        lambda: _check(
            _run(
                ["node", str(node_example), "switch-mode", next(modes)],
                {**env, "TRACEPARENT": traceparent},
            )
        ),
        env,
    )

    assert _policy_events(output, trace_id), output


def _other_mode(current: str) -> str:
    """A mode other than ``current`` (switching to the mode in force changes nothing)."""
    return "RISK_MODE_DEFENSIVE" if current != "RISK_MODE_DEFENSIVE" else "RISK_MODE_NORMAL"


def _check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr


# -- buf curl ------------------------------------------------------------------------------


def _buf_curl(live: LiveSystem, *args: str, token: str | None = None) -> list[str]:
    auth = ["-H", f"authorization: Bearer {token}"] if token else []
    return [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *auth, *args]


def test_buf_curl_lists_services_reads_and_switches_policy(live: LiveSystem) -> None:
    url = f"http://{live.address}"
    listed = _run(_buf_curl(live, "--list-services", url))
    got = _run(
        _buf_curl(
            live, f"{url}/quantum.control.v1.PolicyService/GetPolicy", token=live.viewer_token
        )
    )
    assert listed.returncode == 0, listed.stderr
    assert {"quantum.control.v1.PolicyService", "grpc.health.v1.Health"} <= set(
        listed.stdout.split()
    )
    assert got.returncode == 0, got.stderr
    policy = json.loads(got.stdout)["policy"]
    version = int(policy["version"])
    change = {"mode": _other_mode(policy["mode"]), "expected_version": str(version)}

    switched = _run(
        _buf_curl(
            live,
            "-d",
            json.dumps({**change, "reason": "drill"}),
            f"{url}/quantum.control.v1.PolicyService/SwitchMode",
            token=live.operator_token,
        )
    )
    assert switched.returncode == 0, switched.stderr
    assert int(json.loads(switched.stdout)["policy"]["version"]) == version + 1


def test_buf_curl_follows_a_trace(live: LiveSystem) -> None:
    trace_id, traceparent = live.traceparent()
    url = f"http://{live.address}"
    modes = iter(["RISK_MODE_AGGRESSIVE", "RISK_MODE_NORMAL"] * 8)

    output = _follow_while_changing(
        _buf_curl(
            live,
            "--timeout",
            "6s",
            "-d",
            json.dumps({"trace_id": trace_id}),
            f"{url}/quantum.control.v1.TraceService/SubscribeTraces",
            token=live.viewer_token,
        ),
        lambda: _check(
            _run(
                _buf_curl(
                    live,
                    "-H",
                    f"traceparent: {traceparent}",
                    "-d",
                    json.dumps({"mode": next(modes), "reason": "trace drill"}),
                    f"{url}/quantum.control.v1.PolicyService/SwitchMode",
                    token=live.operator_token,
                )
            )
        ),
    )

    assert _policy_events(output.split('{\n   "code"')[0], trace_id), output


# -- grpcurl -------------------------------------------------------------------------------


def _grpcurl(live: LiveSystem, *args: str, token: str | None = None) -> list[str]:
    auth = ["-H", f"authorization: Bearer {token}"] if token else []
    return [grpcurl_binary(), "-plaintext", *auth, *args]


def test_grpcurl_lists_services_reads_and_switches_policy(live: LiveSystem) -> None:
    listed = _run(_grpcurl(live, live.address, "list"))
    got = _run(
        _grpcurl(
            live,
            live.address,
            "quantum.control.v1.PolicyService/GetPolicy",
            token=live.viewer_token,
        )
    )
    assert listed.returncode == 0, listed.stderr
    assert "quantum.control.v1.TraceService" in listed.stdout.split()
    assert got.returncode == 0, got.stderr
    policy = json.loads(got.stdout)["policy"]
    version = int(policy["version"])
    change = {"mode": _other_mode(policy["mode"]), "expected_version": str(version)}

    switched = _run(
        _grpcurl(
            live,
            "-d",
            json.dumps({**change, "reason": "drill"}),
            live.address,
            "quantum.control.v1.PolicyService/SwitchMode",
            token=live.operator_token,
        )
    )
    stale = _run(
        _grpcurl(
            live,
            "-d",
            json.dumps({**change, "reason": "drill"}),
            live.address,
            "quantum.control.v1.PolicyService/SwitchMode",
            token=live.operator_token,
        )
    )
    assert switched.returncode == 0, switched.stderr
    assert int(json.loads(switched.stdout)["policy"]["version"]) == version + 1
    assert stale.returncode != 0
    assert "Aborted" in stale.stderr


def test_grpcurl_follows_a_trace(live: LiveSystem) -> None:
    trace_id, traceparent = live.traceparent()
    modes = iter(["RISK_MODE_AGGRESSIVE", "RISK_MODE_NORMAL"] * 8)

    output = _follow_while_changing(
        _grpcurl(
            live,
            "-max-time",
            "6",
            "-d",
            json.dumps({"trace_id": trace_id}),
            live.address,
            "quantum.control.v1.TraceService/SubscribeTraces",
            token=live.viewer_token,
        ),
        lambda: _check(
            _run(
                _grpcurl(
                    live,
                    "-H",
                    f"traceparent: {traceparent}",
                    "-d",
                    json.dumps({"mode": next(modes), "reason": "trace drill"}),
                    live.address,
                    "quantum.control.v1.PolicyService/SwitchMode",
                    token=live.operator_token,
                )
            )
        ),
    )

    assert _policy_events(output.split("ERROR:")[0], trace_id), output
