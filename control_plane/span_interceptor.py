"""A span per gRPC call, exported through ``runtime.core.otel``; installed only when export is on.

The caller's ``traceparent`` (gRPC metadata) is the parent; a call without one starts a new
trace. The call runs inside the span's trace context, so its log lines and the events it
publishes carry the span's id, and ``CallWrapper`` (``interceptors``) continues in it rather
than opening a span of its own. Health and reflection calls get spans too.

A grpc.aio interceptor runs a coroutine per call; that is why it is added to the server only
when ``otel.ENABLED`` (with export off, calls cost what they did before).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio
from opentelemetry.trace import SpanKind

from runtime.core import otel, tracing

UnaryBehavior = Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamBehavior = Callable[[Any, aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


class SpanPerCall(aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps each call's behaviour in a SERVER span named ``<service>/<method>``."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        parent = tracing.from_grpc_metadata(handler_call_details.invocation_metadata)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(method, parent, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _stream(method, parent, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # no client-streaming methods in this API


def _unary(method: str, parent: tracing.TraceContext | None, behavior: UnaryBehavior) -> Any:
    async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        span = parent.child() if parent is not None else tracing.new_trace()
        started = time.time_ns()
        error: BaseException | None = None
        try:
            with tracing.use(span):
                return await behavior(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _record(method, span, started, context, error)

    return call


def _stream(method: str, parent: tracing.TraceContext | None, behavior: StreamBehavior) -> Any:
    async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        span = parent.child() if parent is not None else tracing.new_trace()
        started = time.time_ns()
        error: BaseException | None = None
        try:
            with tracing.use(span):
                async for response in behavior(request, context):
                    yield response
        except BaseException as exc:
            error = exc
            raise
        finally:
            _record(method, span, started, context, error)

    return call


def _record(
    method: str,
    span: tracing.TraceContext,
    started: int,
    context: aio.ServicerContext[Any, Any],
    error: BaseException | None,
) -> None:
    code = context.code()
    if code is None:
        code = grpc.StatusCode.UNKNOWN if error is not None else grpc.StatusCode.OK
    service, _, name = method.lstrip("/").rpartition("/")
    otel.record_span(
        method.lstrip("/"),
        kind=SpanKind.SERVER,
        trace_id=span.trace_id,
        span_id=span.span_id,
        parent_span_id=span.parent_span_id,
        start_ns=started,
        end_ns=time.time_ns(),
        attributes={
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
            "rpc.grpc.status_code": code.value[0],
        },
        error=error if code != grpc.StatusCode.OK else None,
    )
