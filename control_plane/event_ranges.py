"""Reading a range of one event stream, by entry id or by time, page by page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from quantum.control.v1.replay_service_pb2 import EventRange
from quantum.events.v1.envelope_pb2 import Envelope

from control_plane.entry_ids import MAX_ID_PART, is_entry_id
from control_plane.errors import FieldViolation, invalid_argument
from control_plane.stored_events import ENVELOPE_FIELD, parse_envelope
from runtime.adapters.redis.client import RedisClient
from runtime.adapters.redis.reads import xrange
from runtime.core.keys import Keyspace
from runtime.core.registry import EventRegistry

PAGE = 512
_TOO_LATE = "is beyond the range of stream entry ids (2**64-1 ms after 1970)"


def _milliseconds(ts: Timestamp) -> int:
    # Not Timestamp.ToMilliseconds: it raises ValueError past year 9999, which the range
    # checks below report as a bad field instead.
    return int(ts.seconds) * 1000 + int(ts.nanos) // 1_000_000


@dataclass(frozen=True, slots=True)
class StreamRange:
    """A checked range: the stream key and inclusive XRANGE bounds."""

    event_type: str
    stream: str
    start: str
    end: str
    limit: int  # 0: no limit


def check_range(
    event_range: EventRange, keyspace: Keyspace, registry: EventRegistry, prefix: str = "range"
) -> StreamRange:
    """Validate a request's range; raises INVALID_ARGUMENT naming every bad field."""
    violations: list[FieldViolation] = []
    known = registry.names()
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
        keyspace.stream(event_range.event_type),
        start,
        end,
        int(event_range.limit),
    )


async def read_range(
    redis: RedisClient, stream_range: StreamRange
) -> AsyncIterator[tuple[str, Envelope | None]]:
    """Every entry of the range, oldest first: (entry id, envelope or None if undecodable)."""
    start = stream_range.start
    remaining = stream_range.limit or None
    while remaining is None or remaining > 0:
        count = PAGE if remaining is None else min(PAGE, remaining)
        entries = await xrange(redis, stream_range.stream, start, stream_range.end, count)
        for entry_id, fields in entries:
            data = fields.get(ENVELOPE_FIELD)
            yield entry_id, parse_envelope(data) if data is not None else None
        if remaining is not None:
            remaining -= len(entries)
        if len(entries) < count:
            return
        start = "(" + entries[-1][0]


async def count_range(redis: RedisClient, stream_range: StreamRange) -> int:
    """How many entries the range holds (reads the ids page by page)."""
    total = 0
    start = stream_range.start
    while True:
        entries = await xrange(redis, stream_range.stream, start, stream_range.end, 4096)
        total += len(entries)
        if stream_range.limit and total >= stream_range.limit:
            return stream_range.limit
        if len(entries) < 4096:
            return total
        start = "(" + entries[-1][0]
