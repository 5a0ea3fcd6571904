"""Reading a range of one event type, by entry id or by time, page by page.

A type split over several partitions (``EventStreams``) is read from each of its streams
and merged by entry id, which orders by time: each partition in its own order, a key's
events (one partition) in theirs.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from quantum.control.v1.replay_service_pb2 import EventRange
from quantum.events.v1.envelope_pb2 import Envelope

from control_plane.entry_ids import MAX_ID_PART, is_entry_id
from control_plane.errors import FieldViolation, invalid_argument
from control_plane.event_streams import EventStreams
from control_plane.stored_events import ENVELOPE_FIELD, parse_envelope
from runtime.core.delivery import entry_order
from runtime.core.operator_store import Entry, OperatorStore

PAGE = 512
_TOO_LATE = "is beyond the range of stream entry ids (2**64-1 ms after 1970)"


def _milliseconds(ts: Timestamp) -> int:
    # Not Timestamp.ToMilliseconds: it raises ValueError past year 9999, which the range
    # checks below report as a bad field instead.
    return int(ts.seconds) * 1000 + int(ts.nanos) // 1_000_000


@dataclass(frozen=True, slots=True)
class StreamRange:
    """A checked range: the type's stream keys (one per partition) and inclusive XRANGE
    bounds."""

    event_type: str
    streams: tuple[str, ...]
    start: str
    end: str
    limit: int  # 0: no limit


def check_range(
    event_range: EventRange, streams: EventStreams, prefix: str = "range"
) -> StreamRange:
    """Validate a request's range; raises INVALID_ARGUMENT naming every bad field."""
    violations: list[FieldViolation] = []
    known = streams.registry.names()
    if not event_range.event_type:
        violations.append(FieldViolation(f"{prefix}.event_type", "is required"))
    elif event_range.event_type not in known:
        violations.append(
            FieldViolation(
                f"{prefix}.event_type",
                f"unknown event type {event_range.event_type!r}; known: {', '.join(known)}",
            )
        )
    for name in ("start_id", "end_id"):
        value = getattr(event_range, name)
        if value and not is_entry_id(value):
            violations.append(
                FieldViolation(
                    f"{prefix}.{name}",
                    f"must be a stream entry id like '1732400000000-0', got {value!r}",
                )
            )
    if event_range.limit < 0:
        violations.append(FieldViolation(f"{prefix}.limit", "must be 0 (no limit) or positive"))
    start_ms = end_ms = None
    if event_range.HasField("start_time"):
        start_ms = _milliseconds(event_range.start_time)
        if start_ms < 0:
            violations.append(FieldViolation(f"{prefix}.start_time", "must not be before 1970"))
        elif start_ms > MAX_ID_PART:
            violations.append(FieldViolation(f"{prefix}.start_time", _TOO_LATE))
    if event_range.HasField("end_time"):
        end_ms = _milliseconds(event_range.end_time)
        if end_ms < 0:
            violations.append(FieldViolation(f"{prefix}.end_time", "must not be before 1970"))
        elif end_ms > MAX_ID_PART:
            violations.append(FieldViolation(f"{prefix}.end_time", _TOO_LATE))
    if start_ms is not None and end_ms is not None and end_ms < start_ms:
        violations.append(FieldViolation(f"{prefix}.end_time", "must not be before start_time"))
    if violations:
        raise invalid_argument("the event range is invalid", violations)
    # Entry ids win over times; an incomplete id as XRANGE's end means "any sequence".
    start = event_range.start_id or (str(start_ms) if start_ms is not None else "-")
    end = event_range.end_id or (str(end_ms) if end_ms is not None else "+")
    return StreamRange(
        event_range.event_type,
        tuple(streams.of_type(event_range.event_type)),
        start,
        end,
        int(event_range.limit),
    )


async def _entries(
    store: OperatorStore, stream: str, start: str, end: str
) -> AsyncGenerator[Entry, None]:
    """Every entry of one stream from ``start`` to ``end``, a page at a time."""
    while True:
        entries = await store.range(stream, start, end, PAGE)
        for entry in entries:
            yield entry
        if len(entries) < PAGE:
            return
        start = "(" + entries[-1][0]


async def read_range(
    store: OperatorStore, stream_range: StreamRange
) -> AsyncIterator[tuple[str, str, Envelope | None]]:
    """Every entry of the range, oldest first over the type's streams: (stream, entry id,
    envelope or None if undecodable)."""
    readers = [
        _entries(store, stream, stream_range.start, stream_range.end)
        for stream in stream_range.streams
    ]
    heads: list[tuple[tuple[int, int], int, str, Entry]] = []
    try:
        for index, reader in enumerate(readers):
            first = await anext(reader, None)
            if first is not None:
                heads.append((entry_order(first[0]), index, stream_range.streams[index], first))
        heapq.heapify(heads)
        remaining = stream_range.limit or None
        while heads and (remaining is None or remaining > 0):
            _, index, stream, (entry_id, fields) = heapq.heappop(heads)
            data = fields.get(ENVELOPE_FIELD)
            yield stream, entry_id, parse_envelope(data) if data is not None else None
            if remaining is not None:
                remaining -= 1
            following = await anext(readers[index], None)
            if following is not None:
                heapq.heappush(heads, (entry_order(following[0]), index, stream, following))
    finally:
        for reader in readers:
            await reader.aclose()


async def count_range(store: OperatorStore, stream_range: StreamRange) -> int:
    """How many entries the range holds (reads the ids page by page, stream by stream)."""
    total = 0
    for stream in stream_range.streams:
        start = stream_range.start
        while True:
            entries = await store.range(stream, start, stream_range.end, 4096)
            total += len(entries)
            if stream_range.limit and total >= stream_range.limit:
                return stream_range.limit
            if len(entries) < 4096:
                break
            start = "(" + entries[-1][0]
    return total
