"""The engine room's knobs on ``quantum run``: parsed, bounded, and passed to every worker."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from runtime.adapters.redis.retention import DEFAULT_BACKPRESSURE_TIMEOUT_S, DEFAULT_RETAIN
from runtime.cli import build_parser
from runtime.core.delivery import RunnerConfig
from runtime.core.trace_index import DEFAULT_MAX_TRACES
from runtime.worker_command import WorkerCommand


def test_defaults_are_the_engine_rooms() -> None:
    args = build_parser().parse_args(["run"])
    defaults = RunnerConfig("x")
    assert args.lease_ttl == defaults.lease_ttl_ms == 5_000
    assert args.dedupe_horizon == defaults.processed_ttl_s == 600
    assert args.retain == DEFAULT_RETAIN == 10_000
    assert args.max_traces == DEFAULT_MAX_TRACES
    assert args.backpressure_timeout == DEFAULT_BACKPRESSURE_TIMEOUT_S


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--lease-ttl", "99", "give 100 to 3,600,000 ms"),
        ("--lease-ttl", "1.5", "not a whole number of ms"),
        ("--dedupe-horizon", "0", "give 1 to"),
        ("--retain", "0", "give 1 to"),
        ("--retain", "many", "not a whole number of entries"),
        ("--max-traces", "-3", "give 1 to"),
        ("--backpressure-timeout", "nan", "0.1 to 86400 seconds"),
        ("--backpressure-timeout", "inf", "0.1 to 86400 seconds"),
        ("--backpressure-timeout", "0", "0.1 to 86400 seconds"),
        ("--rate", "nan", "must be a finite number"),
        ("--duration", "inf", "must be a finite number"),
        ("--speed", "nan", "must be a finite number"),
        ("--rate", "0", "must be greater than 0"),
        ("--workers", "0", "must be at least 1"),
        ("--workers", "two", "not a whole number"),
        ("--feed-skip", "-1", "must be 0 or more"),
    ],
)
def test_bad_values_get_a_clear_error(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["run", flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {flag}" in error
    assert message in error


def test_every_worker_gets_the_knobs() -> None:
    argv = [
        "run",
        "--lease-ttl",
        "1000",
        "--dedupe-horizon",
        "5",
        "--retain",
        "500",
        "--max-traces",
        "2000",
        "--backpressure-timeout",
        "2.5",
    ]
    args = build_parser().parse_args(argv)
    args.partition = (1, 2)
    command = WorkerCommand(args, "redis://127.0.0.1:1/0", "ns", datetime.now(UTC))
    child = build_parser().parse_args(command.argv(0, ("ai_engine",))[3:])
    assert (child.lease_ttl, child.dedupe_horizon, child.retain) == (1000, 5, 500)
    assert (child.max_traces, child.backpressure_timeout) == (2000, 2.5)
