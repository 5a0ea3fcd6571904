"""The end-of-run summary: what flowed through the streams during one run, read from Redis.

It reads the streams rather than in-process counters, so it tells the same story whether the
domains ran in this process or in several (``quantum run --domains ...``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import cast

import redis.asyncio as aioredis
from quantum.events.v1 import portfolio_pb2, risk_pb2

from runtime.core.envelope import decode_envelope, open_payload
from runtime.core.keys import Keyspace
from runtime.core.registry import default_registry

_SCAN_LIMIT = 50_000


@dataclass
class RunSummary:
    """Counts and money of one run."""

    events: dict[str, int] = field(default_factory=dict)
    fills: int = 0
    closed_positions: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    realized_pnl: Decimal = Decimal(0)
    unrealized_pnl: Decimal = Decimal(0)
    equity: Decimal | None = None
    drawdown: Decimal = Decimal(0)

    def render(self) -> str:
        """The summary as a plain-text table for people."""
        rows: list[tuple[str, str]] = [("event type", "count")]
        rows += [(name, str(count)) for name, count in sorted(self.events.items())]
        rows += [("", ""), ("trades (fills)", str(self.fills))]
        rows.append(("positions closed", str(self.closed_positions)))
        rows.append(("realized PnL", f"{self.realized_pnl:.2f}"))
        rows.append(("unrealized PnL", f"{self.unrealized_pnl:.2f}"))
        rows.append(("equity", "-" if self.equity is None else f"{self.equity:.2f}"))
        rows.append(("drawdown", f"{self.drawdown * 100:.2f} %"))
        rows.append(("", ""))
        rows.append(("rejections by reason", "count" if self.rejections else "none"))
        rows += [(reason, str(n)) for reason, n in self.rejections.most_common()]
        width = max(len(left) for left, _ in rows)
        lines = ["=" * (width + 12), "Quantum Trader run summary", "=" * (width + 12)]
        lines += [f"{left:<{width}}  {right:>8}" if left else "" for left, right in rows]
        return "\n".join(lines)


async def stream_positions(redis: aioredis.Redis, keyspace: Keyspace) -> dict[str, str]:
    """The last entry id of every event stream now: where this run's events begin."""
    positions = {}
    for name in default_registry().names():
        last = cast(
            list[tuple[bytes, object]], await redis.xrevrange(keyspace.stream(name), count=1)
        )
        positions[name] = last[0][0].decode() if last else "0-0"
    return positions


async def _entries_after(
    redis: aioredis.Redis, keyspace: Keyspace, event_type: str, after: str
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    start = "(" + after if after != "0-0" else "-"
    entries = await redis.xrange(keyspace.stream(event_type), min=start, count=_SCAN_LIMIT)
    return cast(list[tuple[bytes, dict[bytes, bytes]]], entries)


async def summarize(redis: aioredis.Redis, keyspace: Keyspace, since: dict[str, str]) -> RunSummary:
    """Summarise the events added to every stream after the ``since`` positions."""
    summary = RunSummary()
    for name in default_registry().names():
        entries = await _entries_after(redis, keyspace, name, since.get(name, "0-0"))
        if entries:
            summary.events[name] = len(entries)
        if name == "execution.order.filled":
            summary.fills = len(entries)
        elif name == "portfolio.position.closed":
            summary.closed_positions = len(entries)
        elif name == "risk.signal.rejected":
            for _, fields in entries:
                payload = open_payload(decode_envelope(fields[b"envelope"]))
                assert isinstance(payload, risk_pb2.SignalRejected)
                summary.rejections[risk_pb2.RejectReason.Name(payload.reason)] += 1
        elif name == "portfolio.pnl.updated" and entries:
            last = open_payload(decode_envelope(entries[-1][1][b"envelope"]))
            assert isinstance(last, portfolio_pb2.PnlUpdated)
            summary.realized_pnl = Decimal(last.realized_pnl or 0)
            summary.unrealized_pnl = Decimal(last.unrealized_pnl or 0)
            summary.equity = Decimal(last.equity) if last.equity else None
            summary.drawdown = Decimal(last.drawdown or 0)
    return summary
