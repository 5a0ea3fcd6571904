"""``quantum run --workers N``: the domains over N supervised processes, one summary.

Each test starts the supervisor as a user does and reads its JSON log lines to find the
workers (``worker_started`` carries the pid); it signals only processes it started (the
supervisor, or one of the supervisor's children, by pid).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from runtime.core.keys import Keyspace
from runtime.core.redis_server import free_port
from tests.e2e.quantum_process import (
    SUMMARY_TITLE,
    count,
    log_events,
    run_command,
    start,
    wait_for,
)

pytestmark = pytest.mark.slow

RATE = 200
DURATION_S = 8


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _stop(process: subprocess.Popen[str], workers: list[int]) -> None:
    """Clean up after a failed test: the supervisor, then any worker it left."""
    if process.poll() is None:
        process.kill()
        process.wait()
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _started(event: dict[str, Any]) -> bool:
    return event.get("event") == "worker_started"


def test_two_workers_run_the_pipeline_and_print_one_summary_with_fills(
    redis_server_url: str, keyspace: Keyspace, tmp_path: Path
) -> None:
    result = subprocess.run(
        run_command(
            redis_server_url,
            keyspace.namespace,
            tmp_path,
            "--workers",
            "2",
            "--duration",
            "5",
            "--rate",
            str(RATE),
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(SUMMARY_TITLE) == 1
    assert count(result.stdout, "market.tick") == 5 * RATE
    assert count(result.stdout, "trades") > 0  # "trades (fills)"
    assert count(result.stdout, "execution.order.filled") == count(result.stdout, "trades")
    # every rejection's reason was counted, from the other processes' events, as they came
    reasons = result.stdout.split("rejections by reason")[1]
    by_reason = sum(int(line.split()[-1]) for line in reasons.splitlines()[1:] if line.strip())
    assert by_reason == count(result.stdout, "risk.signal.rejected") > 0
    started = [line for line in result.stderr.splitlines() if '"worker_started"' in line]
    assert len(started) == 2
    assert '"market_data","ai_engine","risk_safety"' in started[0]
    assert '"execution","portfolio","analytics"' in started[1]


@pytest.mark.parametrize("victim", [0, 1], ids=["feed-worker", "portfolio-worker"])
def test_a_killed_worker_is_restarted_and_the_run_completes_with_every_tick(
    redis_server_url: str, keyspace: Keyspace, tmp_path: Path, victim: int
) -> None:
    """SIGKILL mid-run: the supervisor restarts the worker under the same consumer name; a
    restarted feed resumes after the ticks already published, so none is lost or doubled."""
    process = start(
        run_command(
            redis_server_url,
            keyspace.namespace,
            tmp_path,
            "--workers",
            "2",
            "--duration",
            str(DURATION_S),
            "--rate",
            str(RATE),
        )
    )
    workers: list[int] = []
    seen: list[dict[str, Any]] = []
    try:
        assert process.stderr is not None
        events = log_events(process.stderr)
        for _ in range(2):
            workers.append(wait_for(events, _started, 60, seen)["pid"])
        wait_for(events, lambda e: e.get("event") == "runner_started", 30, seen)
        time.sleep(2.5)
        os.kill(workers[victim], signal.SIGKILL)
        exited = wait_for(events, lambda e: e.get("event") == "worker_exited_restarting", 30, seen)
        assert exited["worker"] == victim
        assert exited["exit"] == "killed by SIGKILL"
        again = wait_for(events, _started, 30, seen)
        assert again["worker"] == victim
        assert again["restarts"] == 1
        workers.append(again["pid"])
        out, _ = process.communicate(timeout=120)
    finally:
        _stop(process, workers)
    assert process.returncode == 0
    assert out.count(SUMMARY_TITLE) == 1
    assert count(out, "market.tick") == DURATION_S * RATE
    assert count(out, "trades") > 0


def test_ctrl_c_drains_every_worker_and_exits_0_with_one_summary(
    redis_server_url: str, keyspace: Keyspace, tmp_path: Path
) -> None:
    process = start(
        run_command(
            redis_server_url, keyspace.namespace, tmp_path, "--workers", "2", "--rate", "200"
        )
    )
    workers: list[int] = []
    seen: list[dict[str, Any]] = []
    try:
        assert process.stderr is not None
        events = log_events(process.stderr)
        for _ in range(2):
            workers.append(wait_for(events, _started, 60, seen)["pid"])
        wait_for(events, lambda e: e.get("event") == "runner_started", 30, seen)
        time.sleep(3)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        _stop(process, workers)
    assert process.returncode == 0, err[-3000:]
    assert out.count(SUMMARY_TITLE) == 1
    assert count(out, "market.tick") > 0
    assert count(out, "ai.signal.generated") > 0
    assert err.count('"worker_stopped"') == 2  # both drained and exited 0, in order
    assert all(_gone(pid) for pid in workers)


def test_the_supervisors_metrics_endpoint_shows_every_workers_counters(
    redis_server_url: str, keyspace: Keyspace, tmp_path: Path
) -> None:
    metrics_port = free_port()
    command = run_command(redis_server_url, keyspace.namespace, tmp_path, "--workers", "2")
    command[command.index("--metrics-addr") + 1] = f"127.0.0.1:{metrics_port}"
    process = start(command)
    workers: list[int] = []
    seen: list[dict[str, Any]] = []
    try:
        assert process.stderr is not None
        events = log_events(process.stderr)
        for _ in range(2):
            workers.append(wait_for(events, _started, 60, seen)["pid"])
        wanted = (
            'quantum_events_consumed_total{domain="ai_engine",event_type="market.tick",worker="0"}',
            'quantum_events_consumed_total{domain="portfolio",event_type="market.tick",worker="1"}',
        )
        text = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(w in text for w in wanted):
            time.sleep(0.5)
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=120)
    finally:
        _stop(process, workers)
    assert all(w in text for w in wanted), text[-3000:]
    help_lines = [line for line in text.splitlines() if line.startswith("# HELP")]
    assert len(help_lines) == len(set(help_lines))  # one family per name
    assert process.returncode == 0


def test_workers_stop_by_themselves_when_the_supervisor_is_killed(
    redis_server_url: str, keyspace: Keyspace, tmp_path: Path
) -> None:
    process = start(run_command(redis_server_url, keyspace.namespace, tmp_path, "--workers", "2"))
    workers: list[int] = []
    seen: list[dict[str, Any]] = []
    try:
        assert process.stderr is not None
        events = log_events(process.stderr)
        for _ in range(2):
            workers.append(wait_for(events, _started, 60, seen)["pid"])
        wait_for(events, lambda e: e.get("event") == "runner_started", 30, seen)
        process.kill()
        process.wait()
        # the workers still write their log lines to this pipe: keep reading it
        threading.Thread(target=process.stderr.read, daemon=True).start()
        deadline = time.monotonic() + 60
        while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(_gone(pid) for pid in workers), "a worker outlived its supervisor"
    finally:
        _stop(process, workers)


def test_more_workers_than_domains_is_refused_before_starting(tmp_path: Path) -> None:
    result = subprocess.run(
        run_command(
            "redis://127.0.0.1:1", None, tmp_path, "--workers", "3", "--domains", "portfolio"
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--workers 3: give 1 to 1" in result.stderr


@pytest.mark.parametrize("after_s", [0.05, 0.4])
def test_a_worker_stopped_while_it_starts_drains_and_exits_cleanly(
    redis_server_url: str, keyspace: Keyspace, tmp_path: Path, after_s: float
) -> None:
    """A SIGTERM that reaches a worker before its event loop handles signals (while it
    imports or connects) waits until it does, and stops it cleanly: never Python's default
    action (killed by SIGTERM), never lost (a worker that runs on)."""
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime.worker_main",
            "run",
            "--supervised",
            "--no-control-plane",
            "--workers",
            "1",
            "--domains",
            "ai_engine",
            "--redis-url",
            redis_server_url,
            "--namespace",
            keyspace.namespace,
            "--state-dir",
            str(tmp_path),
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        stdin=subprocess.PIPE,  # its supervisor's pipe: kept open, so only the signal stops it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(after_s)
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, err[-2000:]
