"""Trace context: which trace and span the current code runs in.

The context lives in contextvars, so each asyncio task and each thread started with a copied
context (``contextvars.copy_context().run``, ``asyncio.to_thread``) keeps its own. It is kept
in step with the OpenTelemetry API's current span, and crosses process boundaries in the W3C
``traceparent`` format through OpenTelemetry's propagator: in event envelopes between
domains and in gRPC metadata between processes.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from runtime.core.ids import new_span_id, new_trace_id

TRACEPARENT = "traceparent"

_PROPAGATOR = TraceContextTextMapPropagator()
_HEX = "0123456789abcdef"
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def is_trace_id(value: str) -> bool:
    """A valid W3C trace id: exactly 32 lowercase hex characters, not all zero."""
    # strip() with the hex alphabet leaves "" only when every character is one of them: a C
    # loop, no regex (this runs once per decoded event); the length check rejects a newline.
    return len(value) == 32 and not value.strip(_HEX) and value != _ZERO_TRACE


def is_span_id(value: str) -> bool:
    """A valid W3C span id: exactly 16 lowercase hex characters, not all zero."""
    return len(value) == 16 and not value.strip(_HEX) and value != _ZERO_SPAN


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One span of one trace, in W3C form."""

    trace_id: str
    span_id: str
    parent_span_id: str = ""
    sampled: bool = True

    def __post_init__(self) -> None:
        if not is_trace_id(self.trace_id):
            raise ValueError(f"trace id {self.trace_id!r} is not 32 lowercase hex characters")
        if not is_span_id(self.span_id):
            raise ValueError(f"span id {self.span_id!r} is not 16 lowercase hex characters")

    def child(self, span_id: str | None = None) -> TraceContext:
        """A span inside this one; pass ``span_id`` to make it deterministic."""
        return TraceContext(
            trace_id=self.trace_id,
            span_id=span_id or new_span_id(),
            parent_span_id=self.span_id,
            sampled=self.sampled,
        )

    @property
    def traceparent(self) -> str:
        flags = "01" if self.sampled else "00"
        return f"00-{self.trace_id}-{self.span_id}-{flags}"

    def _otel_span_context(self) -> otel_trace.SpanContext:
        return otel_trace.SpanContext(
            trace_id=int(self.trace_id, 16),
            span_id=int(self.span_id, 16),
            is_remote=False,
            trace_flags=otel_trace.TraceFlags(
                otel_trace.TraceFlags.SAMPLED if self.sampled else otel_trace.TraceFlags.DEFAULT
            ),
        )


class _HasTrace(Protocol):
    @property
    def trace_id(self) -> str: ...
    @property
    def span_id(self) -> str: ...
    @property
    def parent_span_id(self) -> str: ...


# A TraceContext, or (while a handler runs) the event's envelope itself: most handlers never
# ask for their trace, so it is made only when someone does (a log line, an emit).
_current: contextvars.ContextVar[TraceContext | _HasTrace | None] = contextvars.ContextVar(
    "quantum_trace_context", default=None
)


def current() -> TraceContext | None:
    """The trace context the calling code runs in, or None outside any trace."""
    value = _current.get()
    if value is None or type(value) is TraceContext:
        return value
    return trusted(value.trace_id, value.span_id, value.parent_span_id)


def new_trace() -> TraceContext:
    """The root span of a brand-new trace."""
    return TraceContext(trace_id=new_trace_id(), span_id=new_span_id())


# Whether the OpenTelemetry API's context follows ours. Off until an SDK tracer provider is
# configured (``runtime.core.otel``): without one nothing reads that context, and attaching
# it costs more than the rest of an event's dispatch.
_otel_bridge = False


def set_opentelemetry_bridge(enabled: bool) -> None:
    """Keep the OpenTelemetry API's current span in step with ours (on when exporting)."""
    global _otel_bridge
    _otel_bridge = enabled


def opentelemetry_bridge() -> bool:
    return _otel_bridge


@contextmanager
def use(ctx: TraceContext) -> Iterator[TraceContext]:
    """Run the block inside ``ctx``; the previous context comes back on exit.

    The OpenTelemetry API sees the same span (``get_current_span``), so code instrumented
    with it joins the trace.
    """
    token = _current.set(ctx)
    otel_token = otel_context.attach(
        otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(ctx._otel_span_context()))
    )
    try:
        yield ctx
    finally:
        otel_context.detach(otel_token)
        _current.reset(token)


class _EventToken:
    __slots__ = ("otel", "var")

    def __init__(
        self, var: contextvars.Token[TraceContext | _HasTrace | None], otel: object
    ) -> None:
        self.var = var
        self.otel = otel


EventToken = contextvars.Token[TraceContext | _HasTrace | None] | _EventToken


def enter_event(envelope: _HasTrace) -> EventToken:
    """Enter the span of a decoded event (its ids were validated at decode); ``leave`` exits.

    The hot path of every handler call: one context variable set (the envelope itself; the
    TraceContext is made only if asked for), and the OpenTelemetry context only when an
    exporter is configured.
    """
    if not _otel_bridge:
        return _current.set(envelope)
    ctx = trusted(envelope.trace_id, envelope.span_id, envelope.parent_span_id)
    otel_token = otel_context.attach(
        otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(ctx._otel_span_context()))
    )
    return _EventToken(_current.set(ctx), otel_token)


def leave(token: EventToken) -> None:
    if type(token) is _EventToken:
        otel_context.detach(token.otel)  # type: ignore[arg-type]
        _current.reset(token.var)
    else:
        _current.reset(token)  # type: ignore[arg-type]


def trusted(trace_id: str, span_id: str, parent_span_id: str = "") -> TraceContext:
    """A TraceContext from ids already validated (at decode): skips the checks."""
    ctx = object.__new__(TraceContext)
    object.__setattr__(ctx, "trace_id", trace_id)
    object.__setattr__(ctx, "span_id", span_id)
    object.__setattr__(ctx, "parent_span_id", parent_span_id)
    object.__setattr__(ctx, "sampled", True)
    return ctx


@contextmanager
def span(span_id: str | None = None) -> Iterator[TraceContext]:
    """A child span of the current context, or the root of a new trace outside any."""
    parent = current()
    ctx = parent.child(span_id) if parent is not None else new_trace()
    with use(ctx):
        yield ctx


def inject(carrier: MutableMapping[str, str], ctx: TraceContext | None = None) -> None:
    """Write ``ctx`` (default: the current one) into a carrier as a W3C ``traceparent``."""
    ctx = ctx or current()
    if ctx is None:
        return
    otel_ctx = otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(ctx._otel_span_context()))
    _PROPAGATOR.inject(carrier, context=otel_ctx)


def extract(carrier: Mapping[str, str]) -> TraceContext | None:
    """Read a W3C ``traceparent`` from a carrier; None when absent or malformed.

    The extracted span is the *caller's*; code that works on its behalf opens a child of it.
    """
    otel_ctx = _PROPAGATOR.extract(carrier)
    span_context = otel_trace.get_current_span(otel_ctx).get_span_context()
    if not span_context.is_valid:
        return None
    return TraceContext(
        trace_id=f"{span_context.trace_id:032x}",
        span_id=f"{span_context.span_id:016x}",
        sampled=span_context.trace_flags.sampled,
    )


def to_grpc_metadata(ctx: TraceContext | None = None) -> tuple[tuple[str, str], ...]:
    """gRPC metadata that carries ``ctx`` (default: the current one) to another process."""
    carrier: dict[str, str] = {}
    inject(carrier, ctx)
    return tuple(carrier.items())


def from_grpc_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> TraceContext | None:
    """The caller's trace context from gRPC invocation metadata, if it sent one."""
    if not metadata:
        return None
    carrier = {
        key.lower(): value.decode() if isinstance(value, bytes) else value
        for key, value in metadata
        if key.lower() == TRACEPARENT
    }
    return extract(carrier)
