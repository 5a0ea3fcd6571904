"""quantumctl for operators: hints that say what to do, one answer for unknown domains,
dead letters across domains and purged with an audit entry, compact event tables, ``top``
formatting and ``q``, and health exit codes that leave the host's load out."""

from __future__ import annotations

import asyncio
import os
import pty
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from quantum.control.v1 import runtime_service_pb2 as runtime_pb
from quantum.events.v1.portfolio_pb2 import PnlUpdated
from rich.console import Console

from clients.quantumctl.commands import system_status
from clients.quantumctl.dashboard import DashboardState, render
from runtime.core.dead_letters import DeadLetter, xadd_args
from tests.control_plane.conftest import Harness
from tests.control_plane.support import tick_envelopes
from tests.control_plane.test_quantumctl import json_lines, quantumctl

ROOT = Path(__file__).resolve().parents[2]


async def add_dead_letters(h: Harness, domain: str, count: int) -> list[str]:
    ids = []
    for envelope in tick_envelopes(count):
        letter = DeadLetter(
            original_stream=h.keyspace.stream("market.tick"),
            original_entry_id="1-0",
            payload=envelope.SerializeToString(),
            reason="handler_failed",
            error_type="ValueError",
            error_message="boom\nwith a second line " + "x" * 120,
            attempts=5,
            failed_at_ms=1_700_000_000_000,
            consumer="c1",
            event_type="market.tick",
            event_id=envelope.event_id,
        )
        raw = await h.redis.execute_command(*xadd_args(h.keyspace, domain, letter))
        ids.append(raw.decode() if isinstance(raw, bytes) else raw)
    return ids


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- hints ------------------------------------------------------------------------------------


async def test_a_missing_token_hint_names_the_flag_the_variable_and_the_address(
    harness: Harness,
) -> None:
    code, _, err = await quantumctl(harness, "policy", "get")
    assert code == 1
    assert "UNAUTHENTICATED (TOKEN_MISSING)" in err
    assert f"hint: the control plane at {harness.address} needs a token" in err
    assert "--token TOKEN or set QUANTUM_TOKEN" in err


async def test_a_viewer_token_on_a_write_hints_at_the_operator_role(harness: Harness) -> None:
    code, out, _ = await quantumctl(
        harness, "--json", "policy", "set-mode", "defensive", "--reason", "x",
        token=harness.viewer_token,
    )  # fmt: skip
    assert code == 1
    (error,) = json_lines(out)
    assert "with the operator role" in error["error"]["hint"]


async def test_no_server_hint_names_the_address_and_how_to_start_one(harness: Harness) -> None:
    addr = f"127.0.0.1:{_closed_port()}"
    code, _, err = await quantumctl(harness, "--addr", addr, "--timeout", "1", "policy", "get")
    assert code == 1
    assert "UNAVAILABLE:" in err
    assert "()" not in err  # no empty reason
    assert f"nothing answers at {addr}" in err
    assert "'quantum run'" in err
    assert "'quantum control-plane'" in err


# -- unknown domains --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("dlq", "list", "nosuch"),
        ("dlq", "redrive", "nosuch"),
        ("dlq", "purge", "nosuch", "--all"),
        ("replay", "nosuch", "--type", "market.tick"),
    ],
)
async def test_an_unknown_domain_is_domain_unknown_with_the_known_ones(
    harness: Harness, args: tuple[str, ...]
) -> None:
    code, out, _ = await quantumctl(harness, "--json", *args, token=harness.operator_token)
    assert code == 1
    (error,) = json_lines(out)
    assert error["error"]["code"] == "NOT_FOUND"
    assert error["error"]["reason"] == "DOMAIN_UNKNOWN"
    assert "tick_counter" in error["error"]["metadata"]["known_domains"].split(",")
    assert "known domains: tick_counter" in error["error"]["hint"]


# -- dead letters -----------------------------------------------------------------------------


async def test_dlq_list_without_a_domain_lists_every_domain(harness: Harness) -> None:
    await harness.redis.xgroup_create(
        harness.keyspace.stream("market.tick"), "risk_safety", id="0", mkstream=True
    )
    counter_ids = await add_dead_letters(harness, "tick_counter", 2)
    risk_ids = await add_dead_letters(harness, "risk_safety", 1)
    code, out, _ = await quantumctl(harness, "dlq", "list", token=harness.viewer_token)
    assert code == 0, out
    assert "dead letters of every domain: 3" in out
    for entry_id in counter_ids + risk_ids:
        assert entry_id in out
    rows = [line for line in out.splitlines() if any(i in line for i in counter_ids + risk_ids)]
    assert len(rows) == 3  # one line each: the two-line error message is cut to one
    assert all("…" in row for row in rows)
    code, out, _ = await quantumctl(harness, "--json", "dlq", "list", token=harness.viewer_token)
    pages = {page["domain"]: page for page in json_lines(out)}
    assert [d["entry_id"] for d in pages["tick_counter"]["dead_letters"]] == counter_ids
    assert [d["entry_id"] for d in pages["risk_safety"]["dead_letters"]] == risk_ids


async def test_dlq_purge_deletes_the_named_letters_and_audits_it(harness: Harness) -> None:
    first, second, third = await add_dead_letters(harness, "tick_counter", 3)
    code, out, _ = await quantumctl(
        harness, "--json", "dlq", "purge", "tick_counter", first, second,
        token=harness.operator_token,
    )  # fmt: skip
    assert code == 0, out
    (response,) = json_lines(out)
    assert response == {"purged": 2, "entry_ids": [first, second]}
    left = await harness.redis.xrange(harness.keyspace.dlq("tick_counter"))
    assert [entry_id.decode() for entry_id, _ in left] == [third]
    ((_, audit),) = await harness.redis.xrange(harness.keyspace.audit())
    assert audit[b"action"] == b"dead_letters.purge"
    assert audit[b"by"] == b"operator:otto"
    assert audit[b"domain"] == b"tick_counter"
    assert audit[b"entry_ids"] == f"{first},{second}".encode()

    code, out, _ = await quantumctl(
        harness, "dlq", "purge", "tick_counter", "--all", token=harness.operator_token
    )
    assert code == 0
    assert "purged 1 dead letters of tick_counter" in out
    assert await harness.redis.xlen(harness.keyspace.dlq("tick_counter")) == 0
    assert await harness.redis.xlen(harness.keyspace.audit()) == 2


async def test_dlq_purge_refuses_and_changes_nothing(harness: Harness) -> None:
    (letter,) = await add_dead_letters(harness, "tick_counter", 1)
    dlq = harness.keyspace.dlq("tick_counter")
    code, _, err = await quantumctl(
        harness, "dlq", "purge", "tick_counter", letter, token=harness.viewer_token
    )
    assert code == 1
    assert "ROLE_INSUFFICIENT" in err
    code, _, err = await quantumctl(
        harness, "dlq", "purge", "tick_counter", token=harness.operator_token
    )
    assert code == 2
    assert "or pass --all" in err
    code, _, err = await quantumctl(
        harness, "dlq", "purge", "tick_counter", letter, "9-9", token=harness.operator_token
    )
    assert code == 1
    assert "DEAD_LETTER_NOT_FOUND" in err
    assert "quantumctl dlq list tick_counter" in err
    assert await harness.redis.xlen(dlq) == 1
    assert await harness.redis.exists(harness.keyspace.audit()) == 0


# -- events -----------------------------------------------------------------------------------


async def test_the_events_table_has_a_trace_id_and_one_line_per_event(harness: Harness) -> None:
    envelopes = tick_envelopes(3)
    await harness.bus.publish_envelopes(envelopes)
    code, out, _ = await quantumctl(harness, "events", "market.tick", token=harness.viewer_token)
    assert code == 0
    assert "trace id" in out
    for envelope in envelopes:
        (row,) = [line for line in out.splitlines() if envelope.event_id in line]
        assert envelope.trace_id in row
        assert '"symbol": "BTC-USD"' in row or '"symbol":"BTC-USD"' in row


# -- top --------------------------------------------------------------------------------------


def test_top_shows_money_with_two_decimals_drawdown_in_percent_and_market_data() -> None:
    state = DashboardState()
    state.pnl = {
        "equity": "101234.56789",
        "realized_pnl": "-35.78177577",
        "unrealized_pnl": "12",
        "drawdown": "0.00035782",
        "open_positions": 2,
    }
    for _ in range(10):
        state.count("market.tick", time.monotonic())
    console = Console(record=True, width=160)
    console.print(render(state, time.monotonic()))
    text = console.export_text()
    assert "equity 101,234.57" in text
    assert "realised -35.78 / unrealised 12.00" in text
    assert "drawdown 0.04 %" in text
    assert "market_data" in text
    assert "feed: 2.0 ticks/s" in text
    assert "q quits" in text


async def test_top_lists_the_feed_in_json(harness: Harness) -> None:
    async def publish_while_top_runs() -> None:
        while True:
            await harness.bus.publish_envelopes(tick_envelopes(5))
            await harness.bus.publish(PnlUpdated(equity="100000", drawdown="0"))
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
    assert last["feeds"]["market_data"]["ticks_per_s"] > 0
    assert last["pnl"]["equity"] == "100000"


def test_q_quits_top_on_a_terminal(harness: Harness) -> None:
    primary, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
    env.update(QUANTUM_ADDR=harness.address, QUANTUM_TOKEN=harness.viewer_token, COLUMNS="120")
    process = subprocess.Popen(
        [sys.executable, "-m", "clients.quantumctl", "top", "--refresh", "0.2"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env,
        cwd=ROOT,
    )
    os.close(secondary)
    try:
        seen = b""
        deadline = time.monotonic() + 30
        while b"q quits" not in seen and time.monotonic() < deadline:
            seen += os.read(primary, 65536)
        assert b"q quits" in seen, seen[-2000:]
        os.write(primary, b"q")
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(primary)


# -- health -----------------------------------------------------------------------------------


def _health(**statuses: runtime_pb.HealthStatus.ValueType) -> runtime_pb.GetSystemHealthResponse:
    components = [runtime_pb.ComponentHealth(name=n, status=s) for n, s in statuses.items()]
    return runtime_pb.GetSystemHealthResponse(status=max(statuses.values()), components=components)


def test_the_host_load_counts_in_the_system_status_only_when_asked() -> None:
    busy_host = _health(
        redis=runtime_pb.HEALTH_STATUS_HEALTHY, host=runtime_pb.HEALTH_STATUS_CRITICAL
    )
    assert system_status(busy_host, include_host=False) == runtime_pb.HEALTH_STATUS_HEALTHY
    assert system_status(busy_host, include_host=True) == runtime_pb.HEALTH_STATUS_CRITICAL
    degraded = _health(
        redis=runtime_pb.HEALTH_STATUS_DEGRADED, host=runtime_pb.HEALTH_STATUS_HEALTHY
    )
    assert system_status(degraded, include_host=False) == runtime_pb.HEALTH_STATUS_DEGRADED


async def test_health_exit_codes_are_the_system_status_and_3_when_unknown(
    harness: Harness,
) -> None:
    # tick_counter is registered but nothing runs it: no heartbeat, so the system is CRITICAL.
    code, out, _ = await quantumctl(harness, "--json", "health", token=harness.viewer_token)
    assert code == 2
    (report,) = json_lines(out)
    assert report["system_status"] == "HEALTH_STATUS_CRITICAL"
    addr = f"127.0.0.1:{_closed_port()}"
    code, _, err = await quantumctl(harness, "--addr", addr, "--timeout", "1", "health")
    assert code == 3
    assert f"nothing answers at {addr}" in err
