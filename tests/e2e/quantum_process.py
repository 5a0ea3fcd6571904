"""Running ``quantum run`` as a user does, for the end-to-end tests: command lines, the
summary's figures, and the JSON log lines on standard error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
QUANTUM = [sys.executable, "-m", "runtime.cli"]
SUMMARY_TITLE = "Quantum Trader run summary"


def run_command(url: str, namespace: str | None, state_dir: Path, *extra: str) -> list[str]:
    """``quantum run`` on ``url`` with private ports; ``namespace=None`` for a fresh one."""
    named = ["--namespace", namespace] if namespace is not None else []
    return [
        *QUANTUM,
        "run",
        "--redis-url",
        url,
        *named,
        "--state-dir",
        str(state_dir),
        "--grpc-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
        *extra,
    ]


def environment() -> dict[str, str]:
    """The caller's environment without any QUANTUM_* setting, unbuffered."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start(command: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )


def count(summary: str, name: str) -> int:
    """A count from the summary table (0 when the row is absent)."""
    for line in summary.splitlines():
        parts = line.split()
        if parts and parts[0] == name:
            return int(parts[-1])
    return 0


def log_events(stream: IO[str]) -> Iterator[dict[str, Any]]:
    """The JSON log lines of ``stream`` as they come (other lines are skipped)."""
    for line in stream:
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def wait_for(
    events: Iterator[dict[str, Any]],
    matches: Callable[[dict[str, Any]], bool],
    within_s: float,
    seen: list[dict[str, Any]],
) -> dict[str, Any]:
    """The first log event that ``matches``, reading at most ``within_s`` seconds of lines."""
    deadline = time.monotonic() + within_s
    for event in events:
        seen.append(event)
        if matches(event):
            return event
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"no matching log line within {within_s} s; last: {seen[-5:]}")
