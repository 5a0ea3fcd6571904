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
from redis.exceptions import ResponseError

from runtime.core.decimals import DecimalError, parse_decimal
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


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a stream stood: its last entry id and how many entries were ever added to it."""

    last_id: str = "0-0"
    entries_added: int = 0


async def _position(redis: aioredis.Redis, stream: str) -> StreamPosition:
    try:
        info = await redis.xinfo_stream(stream)
    except ResponseError:  # no such stream yet
        return StreamPosition()
    last = info.get("last-generated-id") or b"0-0"
    return StreamPosition(
        last.decode() if isinstance(last, bytes) else str(last), int(info["entries-added"])
    )


async def stream_positions(redis: aioredis.Redis, keyspace: Keyspace) -> dict[str, StreamPosition]:
    """Where every event stream stands now: where this run's events begin."""
    return {
        name: await _position(redis, keyspace.stream(name)) for name in default_registry().names()
    }


async def _entries_after(
    redis: aioredis.Redis, keyspace: Keyspace, event_type: str, after: str
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    start = "(" + after if after != "0-0" else "-"
    entries = await redis.xrange(keyspace.stream(event_type), min=start, count=_SCAN_LIMIT)
    return cast(list[tuple[bytes, dict[bytes, bytes]]], entries)


async def summarize(
    redis: aioredis.Redis, keyspace: Keyspace, since: dict[str, StreamPosition]
) -> RunSummary:
    """Summarise the events added to every stream after the ``since`` positions.

    Counts come from each stream's ``entries-added`` counter, so they stay exact when the
    stream was trimmed during a long run; rejection reasons are read from the entries still
    retained (the last ~10,000 per stream).
    """
    summary = RunSummary()
    for name in default_registry().names():
        before = since.get(name, StreamPosition())
        now = await _position(redis, keyspace.stream(name))
        added = now.entries_added - before.entries_added
        if added <= 0:
            continue
        summary.events[name] = added
        if name == "execution.order.filled":
            summary.fills = added
        elif name == "portfolio.position.closed":
            summary.closed_positions = added
        elif name == "risk.signal.rejected":
            for _, fields in await _entries_after(redis, keyspace, name, before.last_id):
                payload = open_payload(decode_envelope(fields[b"envelope"]))
                assert isinstance(payload, risk_pb2.SignalRejected)
                summary.rejections[risk_pb2.RejectReason.Name(payload.reason)] += 1
        elif name == "portfolio.pnl.updated":
            newest = await redis.xrevrange(keyspace.stream(name), count=1)
            fields = cast(list[tuple[bytes, dict[bytes, bytes]]], newest)[0][1]
            last = open_payload(decode_envelope(fields[b"envelope"]))
            assert isinstance(last, portfolio_pb2.PnlUpdated)
            summary.realized_pnl = _figure(last.realized_pnl) or Decimal(0)
            summary.unrealized_pnl = _figure(last.unrealized_pnl) or Decimal(0)
            summary.equity = _figure(last.equity)
            summary.drawdown = _figure(last.drawdown) or Decimal(0)
    return summary


def _figure(text: str) -> Decimal | None:
    """A reported number, or None when the event carries none usable (never trusted)."""
    try:
        return parse_decimal(text, "figure") if text else None
    except DecimalError:
        return None
