"""The caller's trace context as gRPC metadata: a W3C ``traceparent``.

Read from the current OpenTelemetry context (the standard propagation API), so a client
called inside any traced code, ours or the caller's, joins that trace on the server side.
The client's own copy: it imports nothing of the runtime.
"""

from __future__ import annotations

import re

from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT = "traceparent"
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SPAN_ID = re.compile(r"[0-9a-f]{16}")


def format_traceparent(trace_id: str, span_id: str, *, sampled: bool = True) -> str:
    """``00-<trace id>-<span id>-<flags>``; ValueError when an id is malformed or all zeros."""
    if not _TRACE_ID.fullmatch(trace_id) or trace_id == "0" * 32:
        raise ValueError(f"trace id {trace_id!r} is not 32 lowercase hex characters (not all 0)")
    if not _SPAN_ID.fullmatch(span_id) or span_id == "0" * 16:
        raise ValueError(f"span id {span_id!r} is not 16 lowercase hex characters (not all 0)")
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def current_trace_metadata() -> tuple[tuple[str, str], ...]:
    """``(("traceparent", ...),)`` for the current span; empty outside any trace."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return tuple(carrier.items())
