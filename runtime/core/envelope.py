"""Sealing payloads into envelopes and opening them again, with typed failures.

A consumer that cannot open an entry must say *why* (the dead-letter stream records it), so
every way of failing has its own exception with a stable ``reason``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import ClassVar

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.core import tracing
from runtime.core.dead_letters import Reason
from runtime.core.failures import PermanentFailure
from runtime.core.ids import derive_span_id, new_event_id, new_trace_id
from runtime.core.registry import (
    EventRegistry,
    EventType,
    UnknownEventType,
    UnknownSchemaVersion,
    default_registry,
)


class EnvelopeError(PermanentFailure, ValueError):
    """An entry that cannot be turned into a handled event; ``reason`` is a stable code."""

    reason: ClassVar[Reason] = "invalid"


class UndecodableEvent(EnvelopeError):
    reason: ClassVar[Reason] = "undecodable"


class UnknownEventTypeError(EnvelopeError):
    reason: ClassVar[Reason] = "unknown_type"


class UnknownVersionError(EnvelopeError):
    reason: ClassVar[Reason] = "unknown_version"


class InvalidEnvelope(EnvelopeError):
    reason: ClassVar[Reason] = "invalid"


_REQUIRED_FIELDS = ("event_id", "event_type", "trace_id", "span_id")
# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799
_HEX = "0123456789abcdef"
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def timestamp(at: datetime | None = None) -> Timestamp:
    """A protobuf Timestamp of ``at`` (default: now, UTC)."""
    ts = Timestamp()
    ts.FromDatetime(at if at is not None else datetime.now(UTC))
    return ts


def seal(
    payload: Message,
    *,
    producer: str,
    partition_key: str = "",
    event_id: str | None = None,
    causation_id: str = "",
    trace: tracing.TraceContext | None = None,
    occurred_at: datetime | None = None,
    headers: Mapping[str, str] | None = None,
    registry: EventRegistry | None = None,
) -> Envelope:
    """Wrap ``payload`` in an envelope.

    The trace defaults to a child span of the current context (a new trace outside any); the
    span id is derived from the event id, so a re-sealed event keeps its span.
    """
    event_type = (registry or default_registry()).for_message(payload)
    event_id = event_id or new_event_id()
    parent = trace or tracing.current()
    # The span's fields are set directly (not through TraceContext): this is the publish hot
    # path, and the parent context was validated when it was made.
    if parent is not None:
        trace_id, parent_span_id = parent.trace_id, parent.span_id
    else:
        trace_id, parent_span_id = new_trace_id(), ""
    envelope = Envelope(
        event_id=event_id,
        event_type=event_type.name,
        schema_version=event_type.version,
        trace_id=trace_id,
        span_id=derive_span_id(event_id),
        parent_span_id=parent_span_id,
        causation_id=causation_id,
        occurred_at=timestamp(occurred_at) if occurred_at is not None else _now_timestamp(),
        producer=producer,
        partition_key=partition_key,
        payload=payload.SerializeToString(deterministic=True),
    )
    if headers:
        envelope.headers.update(headers)
    return envelope


def seal_child(
    payload: Message,
    *,
    producer: str,
    partition_key: str,
    event_id: str,
    cause: Envelope,
    headers: Mapping[str, str] | None = None,
    registry: EventRegistry | None = None,
) -> Envelope:
    """Wrap a handler's output: a child of ``cause``'s span, at ``cause``'s event time.

    The handler hot path: the cause was validated at decode, so its trace fields are copied
    as they are. Event time keeps microseconds, as ``seal`` with a datetime does, so an output
    is byte-identical however it was sealed.
    """
    event_type = (registry or default_registry()).for_message(payload)
    at = cause.occurred_at
    envelope = Envelope(
        event_id=event_id,
        event_type=event_type.name,
        schema_version=event_type.version,
        trace_id=cause.trace_id,
        span_id=derive_span_id(event_id),
        parent_span_id=cause.span_id,
        causation_id=cause.event_id,
        occurred_at=Timestamp(seconds=at.seconds, nanos=at.nanos - at.nanos % 1000),
        producer=producer,
        partition_key=partition_key,
        payload=payload.SerializeToString(deterministic=True),
    )
    if headers:
        envelope.headers.update(headers)
    return envelope


def _now_timestamp() -> Timestamp:
    now_ns = time.time_ns()
    return Timestamp(seconds=now_ns // 1_000_000_000, nanos=now_ns % 1_000_000_000)


def decode_envelope(data: bytes) -> Envelope:
    """Parse envelope bytes; raises ``UndecodableEvent`` or ``InvalidEnvelope``.

    The ids are checked here, not when a handler runs: a malformed id would otherwise fail
    every attempt to build the handler's trace, and the entry could never be retried or
    dead-lettered; handlers then take the ids as they are. The hot path is one straight
    check of each field read once; the detailed checks run only to say what is wrong.
    """
    envelope = Envelope()
    try:
        envelope.ParseFromString(data)
    except (DecodeError, RuntimeError) as exc:
        raise UndecodableEvent(f"entry is not a quantum.events.v1.Envelope: {exc}") from exc
    trace_id = envelope.trace_id
    span_id = envelope.span_id
    at = envelope.occurred_at
    seconds = at.seconds
    nanos = at.nanos
    if (
        envelope.event_id
        and envelope.event_type
        and envelope.schema_version
        and len(trace_id) == 32
        and len(span_id) == 16
        and not trace_id.strip(_HEX)
        and not span_id.strip(_HEX)
        and trace_id != _ZERO_TRACE
        and span_id != _ZERO_SPAN
        and _MIN_SECONDS <= seconds <= _MAX_SECONDS
        and 0 <= nanos < 1_000_000_000
    ):
        return envelope
    _explain_invalid(envelope)
    return envelope  # not reached: _explain_invalid raises


def _explain_invalid(envelope: Envelope) -> None:
    """Raise the ``InvalidEnvelope`` that names what is wrong with a decoded envelope."""
    missing = [name for name in _REQUIRED_FIELDS if not getattr(envelope, name)]
    if missing:
        raise InvalidEnvelope(f"envelope is missing required fields: {', '.join(missing)}")
    if envelope.schema_version == 0:
        raise InvalidEnvelope("envelope is missing required field: schema_version")
    at = envelope.occurred_at
    if not (_MIN_SECONDS <= at.seconds <= _MAX_SECONDS and 0 <= at.nanos < 1_000_000_000):
        raise InvalidEnvelope(
            f"envelope occurred_at ({at.seconds} s, {at.nanos} ns) is outside the protobuf "
            "Timestamp range (years 1 to 9999)"
        )
    if not tracing.is_trace_id(envelope.trace_id):
        raise InvalidEnvelope(
            f"envelope trace_id {envelope.trace_id!r} is not 32 lowercase hex characters (non-zero)"
        )
    raise InvalidEnvelope(
        f"envelope span_id {envelope.span_id!r} is not 16 lowercase hex characters (non-zero)"
    )


def payload_type(envelope: Envelope, registry: EventRegistry | None = None) -> EventType:
    """The registered event type an envelope names; raises the unknown-type/version errors."""
    try:
        return (registry or default_registry()).get(envelope.event_type, envelope.schema_version)
    except UnknownSchemaVersion as exc:
        raise UnknownVersionError(str(exc)) from exc
    except UnknownEventType as exc:
        raise UnknownEventTypeError(str(exc)) from exc


def open_payload(
    envelope: Envelope,
    registry: EventRegistry | None = None,
    message: type[Message] | None = None,
) -> Message:
    """Decode the payload named by the envelope's type and version (``message`` when the
    caller already looked its class up)."""
    payload = (message or payload_type(envelope, registry).message)()
    try:
        payload.ParseFromString(envelope.payload)
    except (DecodeError, RuntimeError) as exc:
        raise UndecodableEvent(
            f"payload of {envelope.event_type} v{envelope.schema_version} "
            f"(event {envelope.event_id}) does not decode: {exc}"
        ) from exc
    return payload


def trace_of(envelope: Envelope) -> tracing.TraceContext:
    """The trace context an envelope's handler runs in: the event's own span."""
    return tracing.TraceContext(
        trace_id=envelope.trace_id,
        span_id=envelope.span_id,
        parent_span_id=envelope.parent_span_id,
    )
