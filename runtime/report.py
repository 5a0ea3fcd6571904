"""The end-of-run summary: what flowed through the streams during one run, read from the broker.

It reads the broker (``OperatorStore``) rather than in-process counters, so it tells the same
story whether the domains ran in this process or in several (``quantum run --workers N`` or
``--domains ...``).
Every figure is of this run only:
- events per type: what was appended to each stream after its position at the start
  (``OperatorStore.appended_since``: Redis's ``entries-added`` counter, whatever was trimmed;
  on JetStream the entries held past that position, so a run that appends more than a
  subject keeps, retain + ceiling + overshoot entries, counts only those kept);
- rejections by reason: a ``RejectionTally`` that follows the rejection stream while the run
  goes on and counts each one as it is published (a long run trims the stream far behind it);
- PnL, equity and drawdown: the newest ``portfolio.pnl.updated``, which is cumulative.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

from quantum.events.v1 import portfolio_pb2, risk_pb2

from runtime.core.decimals import DecimalError, parse_decimal
from runtime.core.envelope import decode_envelope, open_payload
from runtime.core.keys import Keyspace
from runtime.core.logs import get_logger
from runtime.core.operator_store import OperatorStore
from runtime.core.partitioning import UNPARTITIONED, Partitioning
from runtime.core.registry import default_registry

_log = get_logger("runtime.report")

REJECTED = "risk.signal.rejected"
_TALLY_BLOCK_MS = 200
_TALLY_BATCH = 1_000


@dataclass
class RunSummary:
    """Counts and money of one run."""

    events: dict[str, int] = field(default_factory=dict)
    fills: int = 0
    closed_positions: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    rejections_uncounted: int = 0  # trimmed away before the tally read them
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
        if self.rejections_uncounted:
            rows.append(("(reason not read: trimmed first)", str(self.rejections_uncounted)))
        width = max(len(left) for left, _ in rows)
        lines = ["=" * (width + 12), "Quantum Trader run summary", "=" * (width + 12)]
        lines += [f"{left:<{width}}  {right:>8}" if left else "" for left, right in rows]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a stream stood: its last entry id and its count (``OperatorStore
    .stream_counters``), from which ``appended`` counts what came after."""

    last_id: str = "0-0"
    entries_added: int = 0


async def _position(store: OperatorStore, stream: str) -> StreamPosition:
    counters = await store.stream_counters(stream)
    if counters is None:  # no such stream yet
        return StreamPosition()
    return StreamPosition(*counters)


async def stream_position(store: OperatorStore, keyspace: Keyspace, topic: str) -> StreamPosition:
    """Where one topic's stream stands now (an event type, or one partition of it)."""
    return await _position(store, keyspace.stream(topic))


async def stream_positions(
    store: OperatorStore, keyspace: Keyspace, partitioning: Partitioning = UNPARTITIONED
) -> dict[str, StreamPosition]:
    """Where every topic's stream stands now (every partition of every event type): where
    this run's events begin."""
    return {
        topic: await _position(store, keyspace.stream(topic))
        for name in default_registry().names()
        for topic in partitioning.topics(name)
    }


async def appended(
    store: OperatorStore,
    keyspace: Keyspace,
    since: dict[str, StreamPosition],
    event_type: str,
    partitioning: Partitioning,
) -> int:
    """The entries appended to an event type's log after the ``since`` positions, over all
    its partitions (``OperatorStore.appended_since``)."""
    total = 0
    for topic in partitioning.topics(event_type):
        position = since.get(topic, StreamPosition())
        total += await store.appended_since(
            keyspace.stream(topic), position.last_id, position.entries_added
        )
    return total


class RejectionTally:
    """Counts ``risk.signal.rejected`` by reason as the events are published.

    Reads the stream from where the run began (no consumer group, so it holds nothing back
    and nothing waits for it), a batch at a time, decoding only the reason. ``run`` follows the
    stream until ``stop``; ``catch_up`` then reads what is left. Should it ever fall further
    behind than the stream retains, ``counted`` ends below the stream's entries-added delta and
    the summary says how many reasons went unread instead of guessing.
    """

    def __init__(
        self,
        store: OperatorStore,
        keyspace: Keyspace,
        after: dict[str, StreamPosition],
        partitioning: Partitioning = UNPARTITIONED,
    ) -> None:
        self._store = store
        # Where the run began on each partition of the rejections' log (topic -> stream).
        self._last_ids = {
            keyspace.stream(topic): after.get(topic, StreamPosition()).last_id
            for topic in partitioning.topics(REJECTED)
        }
        self._stopping = asyncio.Event()
        self.reasons: Counter[str] = Counter()
        self.counted = 0

    async def _read(self, block_ms: int | None) -> int:
        streams = await self._store.read_after(self._last_ids, _TALLY_BATCH, block_ms)
        read = 0
        for stream, entries in streams:
            for entry_id, fields in entries:
                payload = open_payload(decode_envelope(fields[b"envelope"]))
                assert isinstance(payload, risk_pb2.SignalRejected)
                self.reasons[risk_pb2.RejectReason.Name(payload.reason)] += 1
                self._last_ids[stream] = entry_id
                read += 1
        self.counted += read
        return read

    async def run(self) -> None:
        """Follow the stream until ``stop()``; Redis errors are retried (the summary waits)."""
        while not self._stopping.is_set():
            try:
                await self._read(_TALLY_BLOCK_MS)
            except Exception as exc:
                _log.warning("rejection_tally_read_failed", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)

    def stop(self) -> None:
        self._stopping.set()

    async def catch_up(self) -> None:
        """Count everything published since the last read (once the run has stopped)."""
        while await self._read(None) >= _TALLY_BATCH:
            pass


async def summarize(
    store: OperatorStore,
    keyspace: Keyspace,
    since: dict[str, StreamPosition],
    tally: RejectionTally | None = None,
    partitioning: Partitioning = UNPARTITIONED,
) -> RunSummary:
    """Summarise the events added to every topic after the ``since`` positions.

    Counts come from ``OperatorStore.appended_since`` (summed over a type's partitions): on
    Redis each stream's ``entries-added`` counter, exact when a stream was trimmed during a
    long run; on JetStream the entries each subject still holds past the run's start, exact
    unless the run appended more than a subject keeps. Rejection reasons come from
    ``tally`` (given a finished one), else from one read of the entries still retained.
    """
    summary = RunSummary()
    for name in default_registry().names():
        added = await appended(store, keyspace, since, name, partitioning)
        if added <= 0:
            continue
        summary.events[name] = added
        if name == "execution.order.filled":
            summary.fills = added
        elif name == "portfolio.position.closed":
            summary.closed_positions = added
        elif name == REJECTED:
            if tally is None:
                tally = RejectionTally(store, keyspace, since, partitioning)
                await tally.catch_up()
            summary.rejections = tally.reasons
            summary.rejections_uncounted = max(0, added - tally.counted)
        elif name == "portfolio.pnl.updated":
            last = await _newest_pnl(store, keyspace, partitioning)
            summary.realized_pnl = _figure(last.realized_pnl) or Decimal(0)
            summary.unrealized_pnl = _figure(last.unrealized_pnl) or Decimal(0)
            summary.equity = _figure(last.equity)
            summary.drawdown = _figure(last.drawdown) or Decimal(0)
    return summary


async def _newest_pnl(
    store: OperatorStore, keyspace: Keyspace, partitioning: Partitioning
) -> portfolio_pb2.PnlUpdated:
    """The newest PnL update (by event time, over the type's partitions): it is cumulative."""
    name = "portfolio.pnl.updated"
    newest_of: list[tuple[tuple[int, int], portfolio_pb2.PnlUpdated]] = []
    for topic in partitioning.topics(name):
        entry = await store.newest(keyspace.stream(topic))
        if entry is None:
            continue
        envelope = decode_envelope(entry[1][b"envelope"])
        payload = open_payload(envelope)
        assert isinstance(payload, portfolio_pb2.PnlUpdated)
        at = envelope.occurred_at
        newest_of.append(((at.seconds, at.nanos), payload))
    assert newest_of, f"{name} counts entries added but retains none"
    return max(newest_of, key=lambda item: item[0])[1]


def _figure(text: str) -> Decimal | None:
    """A reported number, or None when the event carries none usable (never trusted)."""
    try:
        return parse_decimal(text, "figure") if text else None
    except DecimalError:
        return None
