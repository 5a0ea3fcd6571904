"""deploy/: the alert rules pass promtool, and every dashboard query returns data from a real
Prometheus scraping a live ``quantum run``.

Needs the Prometheus server and promtool (Debian/Ubuntu: ``apt-get install prometheus``;
.ci/run installs it). Without them these tests fail, saying so: the dashboard is only known
to work when they ran.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from quantum.control.v1 import policy_service_pb2 as policy_pb
from quantum.control.v1.policy_service_pb2_grpc import PolicyServiceStub

from runtime.core.keys import Keyspace

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
INSTALL_HINT = (
    "is not installed: install the Prometheus server and promtool "
    "(Debian/Ubuntu: 'sudo apt-get install prometheus'; macOS: 'brew install prometheus')"
)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} {INSTALL_HINT}")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows' nested panels included."""
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                found.append((panel["title"], target["expr"]))

    for path in DASHBOARDS:
        walk(json.loads(path.read_text())["panels"])
    return found


def test_the_dashboard_has_the_panels_an_operator_watches() -> None:
    assert DASHBOARDS, "no dashboard JSON under deploy/grafana/dashboards"
    queries = " ".join(expr for _title, expr in dashboard_queries())
    for metric in (
        "quantum_events_published_total",
        "quantum_handler_latency_seconds_bucket",
        "quantum_consumer_lag",
        "quantum_consumer_pending",
        "quantum_dead_letters_total",
        "quantum_policy_mode",
        "quantum_policy_version",
        "quantum_policy_trading_state",
        "quantum_portfolio_realized_pnl",
        "quantum_portfolio_equity",
        "quantum_portfolio_drawdown_ratio",
        "quantum_redis_up",
        'quantum_component_health{component=~"exchange:.*"}',
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert metric in queries, f"no panel queries {metric}"


def test_promtool_accepts_the_config_and_the_rules_and_their_unit_tests() -> None:
    promtool = _tool("promtool")
    prometheus_dir = DEPLOY / "prometheus"
    for args in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "rules.yml"],
        ["test", "rules", "rules_test.yml"],
    ):
        result = subprocess.run(
            [promtool, *args], cwd=prometheus_dir, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


@pytest.fixture
def live_run(redis_server_url: str, keyspace: Keyspace, tmp_path: Path) -> Iterator[dict[str, int]]:
    """A ``quantum run`` with its metrics and gRPC ports; stopped by its PID after the test."""
    ports = {"metrics": _free_port(), "grpc": _free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
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
            str(tmp_path / "state"),
            "--grpc-addr",
            f"127.0.0.1:{ports['grpc']}",
            "--metrics-addr",
            f"127.0.0.1:{ports['metrics']}",
            "--rate",
            "200",
            "--log-format",
            "json",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "quantum-run.log", "wb"),  # noqa: SIM115 (closed with the process)
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=1)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (tmp_path / "quantum-run.log").read_text()[-3000:]
                    pytest.fail(f"quantum run did not serve metrics:\n{log}")
                time.sleep(0.2)
        yield ports
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def prometheus(live_run: dict[str, int], tmp_path: Path) -> Iterator[str]:
    """A real Prometheus with deploy/'s config and rules, scraping the live run every second."""
    binary = _tool("prometheus")
    folder = tmp_path / "prometheus"
    folder.mkdir()
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert '"pipeline:9464"' in config
    assert "scrape_interval: 5s" in config
    config = config.replace('"pipeline:9464"', f'"127.0.0.1:{live_run["metrics"]}"')
    config = config.replace("scrape_interval: 5s", "scrape_interval: 1s")
    (folder / "prometheus.yml").write_text(config)
    shutil.copy(DEPLOY / "prometheus" / "rules.yml", folder / "rules.yml")
    port = _free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "prometheus.log", "wb"),  # noqa: SIM115 (closed with the process)
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/-/ready", timeout=1)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (folder / "prometheus.log").read_text()[-3000:]
                    pytest.fail(f"prometheus did not start:\n{log}")
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = _get_json(url)
    assert answer["status"] == "success", f"{expr}: {answer}"
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _has_a_number(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(series["value"][1])) for series in result)


def test_every_dashboard_query_returns_data_from_a_live_run(
    live_run: dict[str, int], prometheus: str, redis_server_url: str, keyspace: Keyspace
) -> None:
    # A dead letter to show: an entry no consumer of market.tick can decode.
    client = redis.Redis.from_url(redis_server_url)
    try:
        client.xadd(keyspace.stream("market.tick"), {"envelope": b"\xff not an envelope"})
    finally:
        client.close()
    queries = dashboard_queries()
    missing: dict[str, str] = {}
    with grpc.insecure_channel(f"127.0.0.1:{live_run['grpc']}") as channel:
        stub = PolicyServiceStub(channel)
        deadline = time.monotonic() + 90
        while True:
            stub.GetPolicy(policy_pb.GetPolicyRequest(), timeout=5)  # gRPC panels need calls
            missing = {}
            for title, expr in queries:
                if not _has_a_number(_query(prometheus, expr)):
                    missing[expr] = title
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    assert not missing, "queries without data:\n" + "\n".join(
        f"  {title}: {expr}" for expr, title in missing.items()
    )
    alerts = _get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
    assert {rule["name"] for group in alerts for rule in group["rules"]} >= {
        "QuantumTradingHalted",
        "QuantumRedisDown",
        "QuantumDeadLetters",
        "QuantumDrawdownNearLimit",
        "QuantumConsumerLagGrowing",
    }
