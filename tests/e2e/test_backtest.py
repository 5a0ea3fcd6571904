"""``quantum backtest``: byte-identical output for the same input, causal and event-time order,
the trader's report, the trades CSV and the equity plot."""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from quantum.events.v1.portfolio_pb2 import PnlUpdated, PositionClosed, PositionOpened
from quantum.events.v2.ai_pb2 import SignalGenerated

from runtime.backtest import report_of, run_backtest
from runtime.backtest.engine import build_actors
from runtime.core.actor import Actor, HandlerContext, handles
from runtime.core.policy.memory import InMemoryPolicy
from runtime.domains.portfolio import Portfolio
from runtime.domains.risk_safety import RiskSafety

ROOT = Path(__file__).resolve().parents[2]
FEED = ROOT / "tests" / "fixtures" / "ticks_small.csv"
QUANTUM = [sys.executable, "-m", "runtime.cli", "backtest"]


def _env() -> dict[str, str]:
    """The caller's environment without any QUANTUM_* setting (emit versions and the like)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
    env["PYTHONHASHSEED"] = "random"
    return env


def _backtest(cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [*QUANTUM, "--feed", str(FEED), *extra],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _digest(out: str, name: str) -> str:
    (line,) = [line for line in out.splitlines() if line.startswith(f"{name} digest: ")]
    return line.split(": ", 1)[1]


def test_two_runs_in_two_processes_give_byte_identical_output(tmp_path: Path) -> None:
    args = ("--bar", "1s", "--trades", "trades.csv", "--plot", "equity.png")
    first = _backtest(tmp_path / "one", *args)
    second = _backtest(tmp_path / "two", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    assert first.stdout == second.stdout
    assert len(_digest(first.stdout, "events")) == 64
    trades = (tmp_path / "one" / "trades.csv").read_bytes()
    assert trades == (tmp_path / "two" / "trades.csv").read_bytes()
    lines = trades.decode().splitlines()
    assert lines[0].startswith("symbol,side,quantity,entry_price,exit_price,opened_at")
    assert len(lines) > 1  # the fixture trades: a report of nothing would prove nothing
    png = (tmp_path / "one" / "equity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1000, 600)
    assert first.stderr == ""  # no log line at the default level, nothing else


async def test_in_process_runs_agree_with_each_other_and_with_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k in os.environ if k.startswith("QUANTUM_")]:
        monkeypatch.delenv(name)
    one = await run_backtest(FEED, equity=Decimal(100_000))
    two = await run_backtest(FEED, equity=Decimal(100_000))
    assert [e.SerializeToString() for e in one.events()] == [
        e.SerializeToString() for e in two.events()
    ]
    assert one.events_digest() == two.events_digest()
    assert one.portfolio_state() == two.portfolio_state()
    command = await asyncio.to_thread(_backtest, tmp_path)
    assert command.returncode == 0, command.stderr[-3000:]
    assert _digest(command.stdout, "events") == one.events_digest()
    assert _digest(command.stdout, "portfolio") == one.portfolio_digest()
    kinds = [e.event_type for e in one.events()]
    assert kinds.count("market.tick") == 600
    assert kinds.count("execution.order.filled") > 0
    # Another seed: other tick ids, so other event bytes, but the same trading.
    other = await run_backtest(FEED, equity=Decimal(100_000), seed=1)
    assert other.events_digest() != one.events_digest()
    assert other.portfolio.ledger.figures() == one.portfolio.ledger.figures()


class WatchedRiskSafety(RiskSafety):
    """RiskSafety that writes down, in handling order, the event time of each input."""

    journal: list[tuple[str, datetime]]

    @handles
    def on_signal(self, signal: SignalGenerated, ctx: HandlerContext) -> None:
        self.journal.append(("signal", ctx.occurred_at))
        super().on_signal(signal, ctx)

    @handles
    def on_pnl(self, pnl: PnlUpdated, ctx: HandlerContext) -> None:
        self.journal.append(("portfolio", ctx.occurred_at))
        super().on_pnl(pnl, ctx)

    @handles
    def on_position_opened(self, opened: PositionOpened, ctx: HandlerContext) -> None:
        self.journal.append(("portfolio", ctx.occurred_at))
        super().on_position_opened(opened, ctx)

    @handles
    def on_position_closed(self, closed: PositionClosed, ctx: HandlerContext) -> None:
        self.journal.append(("portfolio", ctx.occurred_at))
        super().on_position_closed(closed, ctx)


async def test_risk_safety_decides_with_the_portfolio_as_of_the_signals_event_time() -> None:
    watched: list[WatchedRiskSafety] = []

    def build(policy: InMemoryPolicy, equity: Decimal) -> tuple[list[Actor], Portfolio]:
        actors, portfolio = build_actors(policy, equity)
        risk = WatchedRiskSafety(policy, starting_equity=equity)
        risk.journal = []
        watched.append(risk)
        return [risk if a.name == "risk_safety" else a for a in actors], portfolio

    result = await run_backtest(FEED, equity=Decimal(100_000), build=build)
    (risk,) = watched
    journal = risk.journal
    assert sum(1 for kind, _ in journal if kind == "signal") > 0
    assert sum(1 for kind, _ in journal if kind == "portfolio") > 0
    times = [at for _, at in journal]
    assert times == sorted(times)  # logical time never goes backwards
    # Every portfolio event of the run earlier than a signal reached risk_safety before it.
    # ...and none from its future.
    portfolio_times = [
        e.occurred_at.ToDatetime(tzinfo=UTC)
        for e in result.events()
        if e.event_type.startswith("portfolio.")
    ]
    for index, (kind, at) in enumerate(journal):
        if kind != "signal":
            continue
        seen = sum(1 for k, _ in journal[:index] if k == "portfolio")
        assert sum(1 for t in portfolio_times if t < at) <= seen
        assert seen <= sum(1 for t in portfolio_times if t <= at)


async def test_the_report_adds_up() -> None:
    result = await run_backtest(FEED, equity=Decimal(100_000))
    report = report_of(result, bar=timedelta(seconds=1))
    assert report.counts["market.tick"] == 600
    assert len(report.trades) == report.counts["portfolio.position.closed"] > 0
    assert report.open_at_end == (
        report.counts["portfolio.position.opened"] - report.counts["portfolio.position.closed"]
    )
    assert sum((s.trades for s in report.per_symbol), 0) == len(report.trades)
    assert report.final_equity == (
        report.starting_equity + report.realized_pnl + report.unrealized_pnl
    )
    assert report.sharpe is not None
    assert report.sortino is not None
    assert 0 < report.drawdown.fraction < 1
    assert 0 < report.time_in_market <= 1
    text = report.render()
    for label in ("win rate", "profit factor", "Sharpe (1s bars", "Sortino", "max drawdown"):
        assert label in text
    assert result.portfolio_digest() in text


def test_a_bad_feed_is_refused_before_anything_runs_or_is_written(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "time,symbol,price,volume\n"
        "2026-11-23T09:00:00Z,BTC-USD,60000,1\n"
        "2026-11-23T09:00:01Z,BTC-USD,-5,1\n"
    )
    result = subprocess.run(
        [*QUANTUM, "--feed", str(bad), "--trades", "t.csv", "--plot", "p.png"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "bad.csv:3" in result.stderr
    assert "price '-5' must be greater than 0" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "t.csv").exists()
    assert not (tmp_path / "p.png").exists()
    empty = tmp_path / "empty.csv"
    empty.write_text("time,symbol,price,volume\n")
    result = subprocess.run(
        [*QUANTUM, "--feed", str(empty)], env=_env(), capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "no ticks" in result.stderr
    result = subprocess.run(
        [*QUANTUM, "--feed", str(FEED), "--bar", "0s"],
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "bar" in result.stderr
