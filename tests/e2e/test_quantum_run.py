"""``quantum run`` as a user runs it: a subprocess on real Redis that ends with the summary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from runtime.core.keys import Keyspace

ROOT = Path(__file__).resolve().parents[2]
QUANTUM = [sys.executable, "-m", "runtime.cli"]
FIXTURE_FEED = ROOT / "tests" / "fixtures" / "ticks_small.csv"


def _command(url: str, keyspace: Keyspace, state_dir: Path, *extra: str) -> list[str]:
    return [
        *QUANTUM,
        "run",
        "--redis-url",
        url,
        "--namespace",
        keyspace.namespace,
        "--state-dir",
        str(state_dir),
        "--grpc-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
        *extra,
    ]


def _count(summary: str, name: str) -> int:
    for line in summary.splitlines():
        parts = line.split()
        if parts and parts[0] == name:
            return int(parts[-1])
    return 0


def test_run_with_a_duration_ends_with_the_summary_table(
    redis_server_url: str, keyspace: Keyspace, tmp_path: Path
) -> None:
    result = subprocess.run(
        _command(redis_server_url, keyspace, tmp_path, "--duration", "4", "--rate", "300"),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "Quantum Trader run summary" in out
    assert _count(out, "market.tick") > 300
    assert "rejections by reason" in out
    # every JSON log line is on stderr, none on stdout
    assert '"event"' not in out


def test_run_replays_a_csv_feed_and_stops_when_it_ends(
    redis_server_url: str, keyspace: Keyspace, tmp_path: Path
) -> None:
    rows = len(FIXTURE_FEED.read_text().splitlines()) - 1
    result = subprocess.run(
        _command(
            redis_server_url, keyspace, tmp_path, "--feed", str(FIXTURE_FEED), "--speed", "max"
        ),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _count(result.stdout, "market.tick") == rows


def test_ctrl_c_stops_cleanly_with_the_summary(
    redis_server_url: str, keyspace: Keyspace, tmp_path: Path
) -> None:
    process = subprocess.Popen(
        _command(redis_server_url, keyspace, tmp_path, "--rate", "200"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 30
        assert process.stderr is not None
        for line in process.stderr:  # wait until it runs
            if "run_started" in line or time.monotonic() > deadline:
                break
        time.sleep(2)
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert "Quantum Trader run summary" in out
    assert _count(out, "market.tick") > 0


def test_bad_arguments_are_refused_with_a_clear_message() -> None:
    result = subprocess.run(
        [*QUANTUM, "run", "--domains", "risk,execution"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown domain(s) risk" in result.stderr


def _delete_namespace(url: str, space: Keyspace) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=space.pattern(), count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def test_two_partitions_of_one_domain_produce_what_one_process_does(
    redis_server_url: str, keyspace: Keyspace, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """ai_engine and execution split over two processes by --partition: every symbol still
    sees its events in order, so signals and fills are exactly those of a single process."""
    single_space = Keyspace(keyspace.namespace + "-single")
    request.addfinalizer(lambda: _delete_namespace(redis_server_url, single_space))
    single = subprocess.run(
        _command(
            redis_server_url,
            single_space,
            tmp_path / "single",
            "--feed",
            str(FIXTURE_FEED),
            "--speed",
            "max",
        ),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    helper = subprocess.Popen(
        [
            *_command(redis_server_url, keyspace, tmp_path / "helper"),
            "--domains",
            "ai_engine,execution",
            "--partition",
            "1/2",
            "--no-control-plane",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        split = subprocess.run(
            _command(
                redis_server_url,
                keyspace,
                tmp_path / "main",
                "--feed",
                str(FIXTURE_FEED),
                "--speed",
                "max",
                "--partition",
                "0/2",
            ),
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    finally:
        helper.send_signal(signal.SIGTERM)
        helper.wait(timeout=60)
    assert split.returncode == 0, split.stderr[-3000:]
    assert helper.returncode == 0
    signals = _count(single.stdout, "ai.signal.generated")
    assert signals > 0
    assert _count(split.stdout, "ai.signal.generated") == signals
    assert _count(split.stdout, "market.tick") == _count(single.stdout, "market.tick")
    assert _count(split.stdout, "execution.order.filled") == _count(
        single.stdout, "execution.order.filled"
    )


def test_bad_configuration_in_the_environment_is_refused_before_starting(tmp_path: Path) -> None:
    for env, expected in (
        ({"QUANTUM_EMIT_VERSIONS": "ai.signal.generated=7"}, "has no schema version 7"),
        ({"QUANTUM_EMIT_VERSIONS": "garbage"}, "is not '<event type>=<version>'"),
        ({"QUANTUM_TOKENS": "alice-only"}, "is not 'name:role:token'"),
    ):
        result = subprocess.run(
            [*QUANTUM, "run", "--duration", "1", "--state-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, (env, result.stderr[-2000:])
        assert expected in result.stderr
        assert "Traceback" not in result.stderr
