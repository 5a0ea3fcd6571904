"""``quantumctl top``: a live terminal dashboard of the running system.

Event rates per type come from following every live event (SubscribeTraces without
filters) and counting them over a sliding window; PnL from the newest
``portfolio.pnl.updated``; lag, policy and health from polling. If the server cuts the
follower off for being slow (RESOURCE_EXHAUSTED), the dashboard subscribes again and says so.
Money shows with 2 decimals and drawdown in percent, as in the run summary. On a terminal,
``q`` quits (as does Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import termios
import time
import tty
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from quantum.control.v1 import runtime_service_pb2 as runtime_pb
from quantum.events.v1 import policy_pb2
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from clients.control_client import ControlClient, ControlError

WINDOW_S = 5.0
HEALTH_EVERY_S = 5.0
FEED_EVENT = "market.tick"  # what market_data publishes: it has no consumer group to show
_STYLE = {
    runtime_pb.HEALTH_STATUS_HEALTHY: "green",
    runtime_pb.HEALTH_STATUS_DEGRADED: "yellow",
    runtime_pb.HEALTH_STATUS_CRITICAL: "red",
}


def money(value: object) -> str:
    """A decimal string as money: thousands separated, 2 decimals; "-" when not a number."""
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return "-"
    return f"{number:,.2f}" if number.is_finite() else "-"


def percent(fraction: object) -> str:
    """A fraction (0.0123) as a percentage with 2 decimals (1.23 %), as the run summary."""
    try:
        number = Decimal(str(fraction))
    except InvalidOperation:
        return "-"
    return f"{number * 100:.2f} %" if number.is_finite() else "-"


@dataclass
class DashboardState:
    """What the dashboard shows, updated by its background tasks."""

    arrivals: dict[str, deque[float]] = field(default_factory=dict)
    pnl: dict[str, Any] = field(default_factory=dict)
    policy: policy_pb2.Policy | None = None
    domains: list[runtime_pb.DomainInfo] = field(default_factory=list)
    health: runtime_pb.GetSystemHealthResponse | None = None
    follower_restarts: int = 0
    last_error: str = ""

    def count(self, event_type: str, at: float) -> None:
        self.arrivals.setdefault(event_type, deque()).append(at)

    def rates(self, now: float) -> dict[str, float]:
        result = {}
        for event_type, times in self.arrivals.items():
            while times and times[0] < now - WINDOW_S:
                times.popleft()
            result[event_type] = len(times) / WINDOW_S
        return result

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "rates_per_s": self.rates(now),
            "pnl": self.pnl,
            "policy": {
                "version": self.policy.version,
                "mode": policy_pb2.RiskMode.Name(self.policy.mode),
                "trading_state": policy_pb2.TradingState.Name(self.policy.trading_state),
            }
            if self.policy is not None
            else None,
            "lag": {
                d.name: {
                    "lag": sum(g.lag for g in d.groups),
                    "pending": sum(g.pending for g in d.groups),
                }
                for d in self.domains
            },
            "feeds": {"market_data": {"ticks_per_s": self.rates(now).get(FEED_EVENT, 0.0)}},
            "health": runtime_pb.HealthStatus.Name(self.health.status) if self.health else None,
            "follower_restarts": self.follower_restarts,
            "last_error": self.last_error,
        }


async def _follow(client: ControlClient, state: DashboardState) -> None:
    while True:
        try:
            async for event in client.follow():
                envelope = event.envelope
                state.count(envelope.event_type, time.monotonic())
                if envelope.event_type == "portfolio.pnl.updated" and event.payload_json:
                    state.pnl = json.loads(event.payload_json)
        except ControlError as error:
            state.last_error = f"live events: {error.code.name} ({error.reason})"
        state.follower_restarts += 1
        await asyncio.sleep(1.0)


async def _poll(client: ControlClient, state: DashboardState, every_s: float) -> None:
    last_health = 0.0
    while True:
        try:
            state.policy = await client.get_policy()
            state.domains = await client.list_domains()
            if time.monotonic() - last_health >= HEALTH_EVERY_S:
                state.health = await client.system_health()
                last_health = time.monotonic()
        except ControlError as error:
            state.last_error = f"{error.code.name}: {error.details.message}"
        await asyncio.sleep(every_s)


def render(state: DashboardState, now: float) -> Group:
    header = Table.grid(padding=(0, 3))
    if state.policy is not None:
        mode = policy_pb2.RiskMode.Name(state.policy.mode).removeprefix("RISK_MODE_")
        trading = policy_pb2.TradingState.Name(state.policy.trading_state).removeprefix(
            "TRADING_STATE_"
        )
        header.add_row(
            f"policy v{state.policy.version}", f"mode [bold]{mode}[/bold]", f"trading {trading}"
        )
    if state.health is not None:
        style = _STYLE.get(state.health.status, "")
        name = runtime_pb.HealthStatus.Name(state.health.status).removeprefix("HEALTH_STATUS_")
        header.add_row("health", f"[{style}]{name}[/{style}]", "")
    if state.pnl:
        pnl = state.pnl
        header.add_row(
            f"equity {money(pnl.get('equity'))}",
            f"realised {money(pnl.get('realized_pnl'))} / unrealised "
            f"{money(pnl.get('unrealized_pnl'))}",
            f"drawdown {percent(pnl.get('drawdown'))}, open {pnl.get('open_positions', 0)}",
        )
    rates = Table(title=f"events per second (last {WINDOW_S:.0f} s)")
    rates.add_column("event type")
    rates.add_column("rate", justify="right")
    for event_type, rate in sorted(state.rates(now).items()):
        rates.add_row(event_type, f"{rate:.1f}")
    lag = Table(title="consumers")
    for column in ("domain", "state", "lag", "pending"):
        lag.add_column(column, justify="right" if column in ("lag", "pending") else "left")
    ticks_per_s = state.rates(now).get(FEED_EVENT, 0.0)
    lag.add_row(
        "market_data",
        f"feed: {ticks_per_s:.1f} ticks/s" if ticks_per_s else "feed: no ticks",
        "-",
        "-",
    )
    for domain in state.domains:
        lag.add_row(
            domain.name,
            domain.state,
            str(sum(g.lag for g in domain.groups)),
            str(sum(g.pending for g in domain.groups)),
        )
    parts: list[Any] = [header, rates, lag, "[dim]q quits[/dim]"]
    if state.last_error:
        parts.append(f"[yellow]{state.last_error}[/yellow]")
    return Group(*parts)


async def run_dashboard(
    client: ControlClient,
    console: Console,
    *,
    refresh_s: float = 1.0,
    duration_s: float = 0.0,
    as_json: bool = False,
) -> int:
    """Show the dashboard until Ctrl-C (or for ``duration_s`` seconds when given)."""
    state = DashboardState()
    tasks = [
        asyncio.create_task(_follow(client, state)),
        asyncio.create_task(_poll(client, state, refresh_s)),
    ]
    started = time.monotonic()
    quit_pressed = asyncio.Event()

    async def next_frame() -> bool:
        """Wait one refresh; False when it is time to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(quit_pressed.wait(), refresh_s)
        return not quit_pressed.is_set() and (
            not duration_s or time.monotonic() - started < duration_s
        )

    try:
        if as_json:
            while await next_frame():
                print(json.dumps(state.snapshot(time.monotonic()), sort_keys=True), flush=True)
        else:
            with (
                quit_key(quit_pressed),
                Live(render(state, time.monotonic()), console=console, auto_refresh=False) as live,
            ):
                while await next_frame():
                    live.update(render(state, time.monotonic()), refresh=True)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return 0


@contextlib.contextmanager
def quit_key(pressed: asyncio.Event) -> Iterator[None]:
    """While inside, a ``q`` typed on the terminal sets ``pressed`` (keys arrive unbuffered,
    without echo). Does nothing when standard input is not a terminal."""
    stdin = sys.stdin
    if not stdin.isatty():
        yield
        return
    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()

    def on_key() -> None:
        with contextlib.suppress(OSError):
            if set(os.read(fd, 64)) & {ord("q"), ord("Q")}:
                pressed.set()

    tty.setcbreak(fd)
    loop.add_reader(fd, on_key)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
