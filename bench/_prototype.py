"""``bench bus --prototype``: the cheap hot-path changes suggested to the runtime, applied by
monkeypatching inside the benchmark processes, to measure what they would save.

Measurement only, never imported by the runtime. Written against the engine room of commit
9f7917f; delete it once the runtime has these changes (or when it no longer matches):

- ``new_event_id``: the 10-character time prefix cached per millisecond, the 16-character
  random part as 8 lookups of a 1,024-entry pair table (same ids);
- ``derive_span_id``: ``blake2b(...).hexdigest()`` instead of int conversion and formatting
  (same span ids);
- ``StreamNames.xadd``: a per-stream prefix and ``%``-formatting instead of
  ``hiredis.pack_command`` (byte-identical commands);
- ``tracing.enter_event``/``leave``/``current``: the envelope itself in the context variable,
  a ``TraceContext`` built only when someone asks for the current trace;
- ``decode_envelope`` in the delivery loop: each field read once, one straight-line check
  (the original runs again only to raise its precise error);
- ``RedisSubscription.acknowledged``: the last acknowledged id of each stream instead of
  ``max`` over all of them (a stream's acknowledgements are in fetch order, ascending).
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf.message import DecodeError
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.adapters.redis import streams, subscription
from runtime.core import delivery, ids, tracing
from runtime.core import envelope as envelopes
from runtime.core.envelope import _MAX_SECONDS, _MIN_SECONDS, UndecodableEvent

_PAIRS = ids._PAIRS
_HEX = "0123456789abcdef"
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)
_lock = threading.Lock()
_last: list[Any] = [-1, 0, ""]  # millisecond, random part, encoded millisecond


def new_event_id(now_ms: int | None = None) -> str:
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    with _lock:
        if ms <= _last[0]:
            _last[1] += 1
        else:
            _last[0], _last[1], _last[2] = ms, _rng.getrandbits(79), ids._encode(ms, 10)
        v: int = _last[1]
        prefix: str = _last[2]
    p = _PAIRS
    return (
        prefix + p[v >> 70 & 1023] + p[v >> 60 & 1023] + p[v >> 50 & 1023] + p[v >> 40 & 1023]
        + p[v >> 30 & 1023] + p[v >> 20 & 1023] + p[v >> 10 & 1023] + p[v & 1023]
    )  # fmt: skip


def derive_span_id(event_id: str) -> str:
    span = hashlib.blake2b(event_id.encode(), digest_size=8).hexdigest()
    return span if span != _ZERO_SPAN else "0000000000000001"


_prefixes: dict[tuple[int, str], bytes] = {}


def xadd(self: streams.StreamNames, event_type: str, data: bytes) -> bytes:
    prefix = _prefixes.get((id(self), event_type))
    if prefix is None:
        stream, maxlen = self.of(event_type)
        parts = (b"XADD", stream, b"MAXLEN", b"~", maxlen, b"*", streams.ENVELOPE_FIELD)
        prefix = b"*8\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        _prefixes[(id(self), event_type)] = prefix
    return prefix + b"$%d\r\n%s\r\n" % (len(data), data)


_current: Any = tracing._current


def enter_event(envelope: Any) -> Any:
    return _current.set(envelope)


def leave(token: Any) -> None:
    _current.reset(token)


def current() -> tracing.TraceContext | None:
    value = _current.get()
    if value is None or type(value) is tracing.TraceContext:
        return value
    return tracing.trusted(value.trace_id, value.span_id, value.parent_span_id)


_decode_with_errors = envelopes.decode_envelope


def decode_envelope(data: bytes) -> Envelope:
    envelope = Envelope()
    try:
        envelope.ParseFromString(data)
    except (DecodeError, RuntimeError) as exc:
        raise UndecodableEvent(f"entry is not a quantum.events.v1.Envelope: {exc}") from exc
    trace_id, span_id, at = envelope.trace_id, envelope.span_id, envelope.occurred_at
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
        and _MIN_SECONDS <= at.seconds <= _MAX_SECONDS
        and 0 <= at.nanos < 1_000_000_000
    ):
        return envelope
    return _decode_with_errors(data)  # raises the precise error


def acknowledged(self: subscription.RedisSubscription, acks: Mapping[str, Sequence[bytes]]) -> None:
    last = self._last_acked
    for stream, entry_ids in acks.items():
        newest = entry_ids[-1]
        known = last.get(stream)
        if known is None or delivery.entry_order(newest) > delivery.entry_order(known):
            last[stream] = newest


def apply() -> None:
    """Patch this process's runtime modules (call before the measured work)."""
    patches: tuple[tuple[object, str, object], ...] = (
        (envelopes, "new_event_id", new_event_id),
        (envelopes, "derive_span_id", derive_span_id),
        (streams.StreamNames, "xadd", xadd),
        (tracing, "enter_event", enter_event),
        (tracing, "leave", leave),
        (tracing, "current", current),
        (delivery, "decode_envelope", decode_envelope),
        (subscription.RedisSubscription, "acknowledged", acknowledged),
    )
    for owner, name, value in patches:
        setattr(owner, name, value)
