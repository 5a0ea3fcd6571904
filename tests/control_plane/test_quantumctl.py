"""quantumctl against an in-process control plane: tables, JSON, errors, replay and top."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from quantum.events.v1 import policy_pb2

from clients.control_client import policy_update
from clients.quantumctl.cli import build_parser
from tests.control_plane.conftest import Harness
from tests.control_plane.support import tick_envelopes


async def quantumctl(
    h: Harness, *args: str, token: str | None = None, state_dir: Path | None = None
) -> tuple[int, str, str]:
    env = dict(os.environ, QUANTUM_ADDR=h.address, COLUMNS="200")
    env.pop("QUANTUM_TOKEN", None)
    # Never the caller's ./state: a local operator token there is not this test's.
    env["QUANTUM_STATE_DIR"] = str(state_dir or Path("/nonexistent-quantum-state"))
    if token is not None:
        env["QUANTUM_TOKEN"] = token
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clients.quantumctl",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_policy_commands_read_write_and_show_the_history(harness: Harness) -> None:
    code, out, _ = await quantumctl(harness, "policy", "get", token=harness.viewer_token)
    assert code == 0
    assert "policy v1: mode NORMAL" in out
    code, out, _ = await quantumctl(
        harness,
        "--json",
        "policy",
        "update",
        "defensive.max_leverage=1.5",
        "trading_state=reducing",
        "--reason",
        "ctl test",
        "--expected-version",
        "1",
        token=harness.operator_token,
    )
    assert code == 0, out
    (policy,) = json_lines(out)
    assert policy["defensive"]["max_leverage"] == "1.5"
    assert policy["trading_state"] == "TRADING_STATE_REDUCING"
    code, out, _ = await quantumctl(harness, "policy", "history", token=harness.viewer_token)
    assert code == 0
    assert "operator:otto" in out
    assert "ctl test" in out


async def test_errors_are_reported_with_their_reason_and_a_failing_exit_code(
    harness: Harness,
) -> None:
    code, out, _ = await quantumctl(
        harness,
        "--json",
        "policy",
        "set-mode",
        "defensive",
        "--reason",
        "nope",
        token=harness.viewer_token,
    )
    assert code == 1
    (error,) = json_lines(out)
    assert error["error"]["code"] == "PERMISSION_DENIED"
    assert error["error"]["reason"] == "ROLE_INSUFFICIENT"
    code, _, err = await quantumctl(
        harness,
        "policy",
        "update",
        "normal.max_leverage=lots",
        "--reason",
        "bad",
        token=harness.operator_token,
    )
    assert code == 1
    assert "INVALID_ARGUMENT" in err
    assert "policy.normal.max_leverage" in err


async def test_replay_dry_run_reports_progress_and_outputs(harness: Harness) -> None:
    await harness.bus.publish_envelopes(tick_envelopes(3))
    code, out, _ = await quantumctl(
        harness,
        "--json",
        "replay",
        "tick_counter",
        "--type",
        "market.tick",
        token=harness.viewer_token,
    )
    assert code == 0
    steps = json_lines(out)
    assert [(s["processed"], s["total"]) for s in steps] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert all(len(s["outputs"]) == 1 for s in steps)


async def test_top_prints_rates_policy_and_consumers(harness: Harness) -> None:
    async def publish_while_top_runs() -> None:
        while True:
            await harness.bus.publish_envelopes(tick_envelopes(5))
            await asyncio.sleep(0.05)

    publisher = asyncio.create_task(publish_while_top_runs())
    try:
        code, out, _ = await quantumctl(
            harness, "--json", "top", "--duration", "3", "--refresh", "0.5",
            token=harness.viewer_token,
        )  # fmt: skip
    finally:
        publisher.cancel()
    assert code == 0
    last = json_lines(out)[-1]
    assert last["policy"]["mode"] == "RISK_MODE_NORMAL"
    assert last["rates_per_s"]["market.tick"] > 0
    assert "tick_counter" in last["lag"]


def test_quantumctl_reads_client_tls_variables_not_the_servers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUANTUM_TLS_CERT", "server.crt")
    monkeypatch.setenv("QUANTUM_TLS_KEY", "server.key")
    monkeypatch.delenv("QUANTUM_TLS_CA", raising=False)
    args = build_parser().parse_args(["policy", "get"])
    assert (args.tls_ca, args.tls_cert, args.tls_key) == (None, None, None)
    monkeypatch.setenv("QUANTUM_CLIENT_TLS_CA", "ca.crt")
    monkeypatch.setenv("QUANTUM_CLIENT_TLS_CERT", "client.crt")
    monkeypatch.setenv("QUANTUM_CLIENT_TLS_KEY", "client.key")
    args = build_parser().parse_args(["policy", "get"])
    assert (args.tls_ca, args.tls_cert, args.tls_key) == (
        Path("ca.crt"),
        Path("client.crt"),
        Path("client.key"),
    )


def test_every_limit_field_of_every_mode_can_be_updated() -> None:
    limit_modes = [
        f.name
        for f in policy_pb2.Policy.DESCRIPTOR.fields
        if f.message_type is policy_pb2.ModeLimits.DESCRIPTOR
    ]
    assert limit_modes == ["aggressive", "normal", "defensive"]
    for mode in limit_modes:
        for field in policy_pb2.ModeLimits.DESCRIPTOR.fields:
            value: object = ["BTC-USD"] if field.is_repeated else "3"
            policy, mask = policy_update({f"{mode}.{field.name}": value})
            assert list(mask.paths) == [f"{mode}.{field.name}"]
            assert getattr(getattr(policy, mode), field.name), f"{mode}.{field.name} was not set"


@pytest.mark.parametrize("typed", ["1_000", " 5", "5 ", "\u0665", "5.0", "-1", "", "99999999999"])
def test_counts_typed_loosely_are_refused_before_any_call(typed: str) -> None:
    with pytest.raises(ValueError, match=r"normal\.max_open_positions"):
        policy_update({"normal.max_open_positions": typed})
    policy, _ = policy_update({"normal.max_open_positions": "7"})
    assert policy.normal.max_open_positions == 7
