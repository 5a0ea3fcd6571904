"""OpenTelemetry span export: opt-in, configured by the standard ``OTEL_*`` variables.

Export is on when ``configure_from_env`` finds one of these (and ``OTEL_SDK_DISABLED`` is not
``true``, ``OTEL_TRACES_EXPORTER`` is not ``none``):

- ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` (non-empty), or
- ``OTEL_TRACES_EXPORTER=otlp`` (the exporter's default endpoint, localhost:4317).

Spans go out over OTLP/gRPC through a batch processor; the exporter and the processor read
their own variables (``OTEL_EXPORTER_OTLP_INSECURE``, ``..._HEADERS``, ``..._CERTIFICATE``,
``OTEL_BSP_SCHEDULE_DELAY`` ...), the resource reads ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``, the sampler ``OTEL_TRACES_SAMPLER``. This is the only module that
imports the SDK and the exporter.

What costs what: the hooks (runner, bus, feed, control plane) ask ``ENABLED`` once, when they
are built, and keep either the plain callable or its ``traced_*`` wrapper. With export off the
hot path runs exactly the code it ran before: no check per event, no OpenTelemetry call. So
``configure_from_env`` must run before the runtime is built (``quantum run`` does it first).

Which span ids, and why. An envelope carries the W3C trace id, the event's own span id
(derived from its event id) and its parent span id (the span of the event that caused it: a
handler's outputs are sealed in the input's span). Several domains handle one event (a tick
goes to ai_engine, execution and portfolio), so no handler can take the event's span id as
its own: ids must be unique in a trace. The exported tree therefore has two kinds of span:

- ``publish <type>`` (PRODUCER), one per event, exported by whoever published it, with the
  event's own span id. Its parent is the handler span that emitted it (a runner's outputs),
  or the envelope's parent span (the feed: none, a new trace per tick). Start: the publish
  call; end: Redis confirmed it.
- ``handle <type>`` (CONSUMER), one per event and consuming domain, as a child of the event's
  ``publish`` span. Its id is derived from (event span id, domain): the producer side can
  compute it from the envelope alone, so the outputs' ``publish`` spans find their parent
  without any state shared between the two. A failed attempt gets a random id (the retry
  that succeeds owns the derived one).

So one trace reads publish tick → handle tick (ai_engine) → publish signal → handle signal
(risk_safety) → publish approved → ... → publish position and PnL → handle them (risk_safety,
analytics), each with its duration; the gaps between them are queueing. Both kinds are
recorded after the fact (start time given, then ended at once), which lets the id depend on
the outcome. The SDK makes span ids through its ``IdGenerator``; ``_ChosenIds`` hands it the
id (and, for a root, the trace id) the envelope dictates, and random ones otherwise.

Besides: ``publish batch`` (one per Redis round trip of the event bus; a root span of its own,
as a batch carries many traces) and a SERVER span per gRPC call (``control_plane``'s
interceptor), whose id is the call's trace context, so events a call publishes point at it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from hashlib import blake2b
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from google.protobuf.message import Message
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.core import tracing
from runtime.core.actor import Actor
from runtime.core.logs import get_logger
from runtime.core.registry import EventRegistry
from runtime.core.transport import Commit

_log = get_logger("runtime.otel")

ENABLED = False  # read by the hooks when they are built; see the module doc
DEFAULT_SERVICE_NAME = "quantum-trader"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
SHUTDOWN_TIMEOUT_S = 3.0
MAX_TRACE_IDS_PER_BATCH = 32  # a batch span names at most this many of its traces

T = TypeVar("T")
Deliver = Callable[
    [Actor, Envelope, EventRegistry | None, Message | None], Awaitable[list[Envelope]]
]


class Queued(Protocol):
    """What a publish batch span reads of each queued event."""

    @property
    def event_type(self) -> str: ...

    @property
    def trace_id(self) -> str: ...


Q = TypeVar("Q", bound=Queued)
_NO_ACTOR: Any = None  # traced_dispatch's inner deliver takes its actor from the dispatcher


class OtelConfigError(ValueError):
    """The OTEL_* variables ask for something this process cannot do."""


class _ChosenIds(IdGenerator):
    """Span (and root trace) ids chosen for the next span, else random ones.

    ``choose`` and the span's start run together on one thread, so the choice is per thread.
    """

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self._local = threading.local()

    def choose(self, trace_id: int, span_id: int | None) -> None:
        """Ids for the next span (0 / None: random ones)."""
        self._local.trace_id = trace_id
        self._local.span_id = span_id

    def random_trace_id(self) -> str:
        return f"{self._random.generate_trace_id():032x}"

    def generate_trace_id(self) -> int:
        chosen: int = getattr(self._local, "trace_id", 0)
        return chosen or self._random.generate_trace_id()

    def generate_span_id(self) -> int:
        chosen: int | None = getattr(self._local, "span_id", None)
        self.choose(0, None)  # the choice is for one span only
        return chosen or self._random.generate_span_id()

    def is_trace_id_random(self) -> bool:
        return False  # chosen trace ids come from envelopes, made elsewhere


_ids = _ChosenIds()
_provider: TracerProvider | None = None
_tracer: otel_trace.Tracer | None = None


# -- configuration --------------------------------------------------------------------------


def export_requested(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` turns span export on (see the module doc); raises
    ``OtelConfigError`` when it asks for an exporter or protocol this process lacks."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    if exporter not in ("", "otlp"):
        raise OtelConfigError(
            f"OTEL_TRACES_EXPORTER={exporter!r} is not supported: quantum exports spans over "
            "OTLP/gRPC only; set it to 'otlp' (or 'none', or unset it)"
        )
    endpoints = {name: environ.get(name, "").strip() for name in ENDPOINT_VARIABLES}
    if exporter != "otlp" and not any(endpoints.values()):
        return False
    for name in PROTOCOL_VARIABLES:
        protocol = environ.get(name, "").strip().lower()
        if protocol not in ("", "grpc"):
            raise OtelConfigError(
                f"{name}={protocol!r} is not supported: quantum exports spans over OTLP/gRPC "
                "only; set it to 'grpc' or unset it (the receiver's gRPC port is usually 4317)"
            )
    for name, endpoint in endpoints.items():
        if endpoint:
            _check_endpoint(name, endpoint)
    return True


def _check_endpoint(name: str, endpoint: str) -> None:
    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("", "http", "https") or not parts.hostname or port == -1:
        raise OtelConfigError(
            f"{name}={endpoint!r} is not an OTLP/gRPC endpoint; give one like "
            "http://127.0.0.1:4317 (https:// for TLS)"
        )


def configure_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Turn span export on when the OTEL_* variables ask for it; True when on."""
    if ENABLED:
        return True
    if not export_requested(os.environ if environ is None else environ):
        return False
    configure(OTLPSpanExporter())  # reads its endpoint, TLS and headers from the variables
    return True


def configure(exporter: SpanExporter, *, set_global: bool = True) -> None:
    """Export spans through ``exporter`` (batched); ``set_global`` also installs the provider
    as OpenTelemetry's global one, for any other instrumentation in the process."""
    global ENABLED, _provider, _tracer
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    # shutdown() flushes, bounded; the SDK's own exit hook would wait on an absent receiver.
    provider = TracerProvider(resource=resource, id_generator=_ids, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    if set_global:
        otel_trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("quantum-trader-core")
    ENABLED = True
    # Code instrumented with the OpenTelemetry API now sees each handled event's span.
    tracing.set_opentelemetry_bridge(True)


def shutdown(timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
    """Export what is still buffered and stop; hooks built before keep recording nothing.

    Bounded: with the collector away the exporter retries for as long as its own timeout
    allows, and a process must not wait that long to exit; what is unsent then is lost.
    """
    global ENABLED, _provider, _tracer
    provider = _provider
    ENABLED, _provider, _tracer = False, None, None
    tracing.set_opentelemetry_bridge(False)
    if provider is None:
        return
    flushing = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    flushing.start()
    flushing.join(timeout_s)
    if flushing.is_alive():
        _log.warning(
            "spans_not_exported",
            timeout_s=timeout_s,
            hint="the OTLP receiver did not take the last spans in time; check that it runs "
            "at OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT)",
        )


# -- spans ----------------------------------------------------------------------------------


def handler_span_id(event_span_id: str, domain: str) -> str:
    """The span id of ``domain``'s handling of the event whose span id is given."""
    digest = blake2b(f"{event_span_id}|{domain}".encode(), digest_size=8).digest()
    return f"{int.from_bytes(digest, 'big') or 1:016x}"


def record_span(
    name: str,
    *,
    kind: SpanKind,
    trace_id: str,
    span_id: str | None,
    parent_span_id: str,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, str | int | Sequence[str]],
    error: BaseException | None = None,
) -> None:
    """Export one finished span with the given ids (``span_id`` None: a random one)."""
    tracer = _tracer
    if tracer is None:
        return
    if parent_span_id:
        parent = otel_trace.SpanContext(
            trace_id=int(trace_id, 16),
            span_id=int(parent_span_id, 16),
            is_remote=True,
            trace_flags=otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED),
        )
        context = otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(parent))
    else:
        context = otel_context.Context()  # explicitly empty: a root, whatever runs around
    _ids.choose(int(trace_id, 16), int(span_id, 16) if span_id else None)
    try:
        span = tracer.start_span(
            name, context=context, kind=kind, attributes=attributes, start_time=start_ns
        )
    finally:
        _ids.choose(0, None)  # the SDK skips asking for ids when tracing is disabled
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end(end_time=end_ns)


def traced_deliver(deliver: Deliver, domain: str) -> Deliver:
    """``deliver`` that exports a ``handle <type>`` span per call (see the module doc)."""

    async def traced(
        actor: Actor,
        envelope: Envelope,
        registry: EventRegistry | None = None,
        payload: Message | None = None,
    ) -> list[Envelope]:
        started = time.time_ns()
        error: BaseException | None = None
        outputs: list[Envelope] = []
        try:
            outputs = await deliver(actor, envelope, registry, payload)
            return outputs
        except BaseException as exc:
            error = exc
            raise
        finally:
            event_type = envelope.event_type
            record_span(
                f"handle {event_type}",
                kind=SpanKind.CONSUMER,
                trace_id=envelope.trace_id,
                span_id=None if error is not None else handler_span_id(envelope.span_id, domain),
                parent_span_id=envelope.span_id,
                start_ns=started,
                end_ns=time.time_ns(),
                attributes={
                    "quantum.domain": domain,
                    "quantum.event_type": event_type,
                    "quantum.event_id": envelope.event_id,
                    "quantum.outputs": len(outputs),
                    "messaging.operation.type": "process",
                },
                error=error,
            )

    return traced


Dispatch = Callable[[Envelope], "list[Envelope] | Awaitable[list[Envelope]]"]


def traced_dispatch(dispatch: Dispatch, domain: str) -> Dispatch:
    """A delivery loop's dispatch that exports a ``handle <type>`` span per call."""

    async def plain(
        actor: Actor,
        envelope: Envelope,
        registry: EventRegistry | None = None,
        payload: Message | None = None,
    ) -> list[Envelope]:
        result = dispatch(envelope)
        return result if isinstance(result, list) else await result

    traced = traced_deliver(plain, domain)

    def dispatch_traced(envelope: Envelope) -> Awaitable[list[Envelope]]:
        return traced(_NO_ACTOR, envelope, None, None)

    return dispatch_traced


def traced_commit(
    commit: Callable[[Commit], Awaitable[None]], domain: str
) -> Callable[[Commit], Awaitable[None]]:
    """A committer's commit that exports a ``publish <type>`` span per output it stores."""

    async def traced(batch: Commit) -> None:
        async def store(_outputs: list[Envelope]) -> None:
            await commit(batch)

        await traced_publish(store, domain, from_handler=True)(batch.outputs)

    return traced


def traced_publish(
    publish: Callable[[list[Envelope]], Awaitable[T]], domain: str, *, from_handler: bool
) -> Callable[[list[Envelope]], Awaitable[T]]:
    """``publish`` that exports a ``publish <type>`` span per envelope, with its own span id.

    ``from_handler``: the envelopes are a handler's outputs (a runner of ``domain``), so each
    one's parent is that handler's span; otherwise the envelope's parent span as sealed.
    """

    async def traced(envelopes: list[Envelope]) -> T:
        started = time.time_ns()
        error: BaseException | None = None
        try:
            return await publish(envelopes)
        except BaseException as exc:
            error = exc
            raise
        finally:
            ended = time.time_ns()
            for envelope in envelopes:
                parent = envelope.parent_span_id
                if from_handler and parent:
                    parent = handler_span_id(parent, domain)
                record_span(
                    f"publish {envelope.event_type}",
                    kind=SpanKind.PRODUCER,
                    trace_id=envelope.trace_id,
                    span_id=envelope.span_id,
                    parent_span_id=parent,
                    start_ns=started,
                    end_ns=ended,
                    attributes={
                        "quantum.domain": domain,
                        "quantum.event_type": envelope.event_type,
                        "quantum.event_id": envelope.event_id,
                        "messaging.operation.type": "publish",
                    },
                    error=error,
                )

    return traced


def traced_send(send: Callable[[list[Q]], Awaitable[T]]) -> Callable[[list[Q]], Awaitable[T]]:
    """An event bus's batch send that exports a ``publish batch`` span per round trip."""

    async def traced(batch: list[Q]) -> T:
        started = time.time_ns()
        error: BaseException | None = None
        try:
            return await send(batch)
        except BaseException as exc:
            error = exc
            raise
        finally:
            traces = list(dict.fromkeys(item.trace_id for item in batch))
            record_span(
                "publish batch",
                kind=SpanKind.CLIENT,
                trace_id=_ids.random_trace_id(),
                span_id=None,
                parent_span_id="",
                start_ns=started,
                end_ns=time.time_ns(),
                attributes={
                    "messaging.batch.message_count": len(batch),
                    "quantum.event_types": sorted({item.event_type for item in batch}),
                    "quantum.trace_ids": traces[:MAX_TRACE_IDS_PER_BATCH],
                },
                error=error,
            )

    return traced
