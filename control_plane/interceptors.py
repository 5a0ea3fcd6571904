"""What happens around every RPC: auth, trace context, deadlines and error mapping.

Each method's behaviour is wrapped once, when it is registered, so the per-call cost is a
metadata scan and a context-variable set. Inside the wrapper:

- the bearer token is checked against the role the method needs (``auth``);
- the caller's ``traceparent`` becomes the parent of this call's span (``runtime.core.tracing``),
  so every log line of the call carries its trace id (with span export on, the span the
  ``span_interceptor`` opened and exports);
- the caller's deadline is grpc's: when it passes, grpc cancels the call's coroutine;
- typed errors become rich statuses (``errors``); anything unexpected becomes INTERNAL with
  a log line, never UNKNOWN;
- the call is counted by method and status code, and timed (``quantum_grpc_server_*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from control_plane.auth import (
    Role,
    TokenTable,
    authorize_token,
    parse_bearer,
    required_role,
    reset_principal,
    set_principal,
)
from control_plane.errors import ControlPlaneError, Reason, bad_field
from control_plane.runtime_errors import translate
from runtime.core import tracing
from runtime.core.logs import get_logger
from runtime.core.metrics import RuntimeMetrics, runtime_metrics

log = get_logger("control_plane.rpc")

UnaryBehavior = Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamBehavior = Callable[[Any, aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


async def _abort(context: aio.ServicerContext[Any, Any], error: ControlPlaneError) -> None:
    await context.abort_with_status(error.to_status())


def _as_control_plane_error(method: str, exc: Exception) -> ControlPlaneError:
    mapped = translate(exc)
    if mapped is not None:
        return mapped
    log.error("rpc_failed", method=method, error_type=type(exc).__name__, exc_info=exc)
    return ControlPlaneError(
        grpc.StatusCode.INTERNAL,
        f"{method} failed unexpectedly ({type(exc).__name__}); the server log has the details",
        Reason.INTERNAL,
    )


class CallWrapper:
    """Adds auth, tracing and error mapping to every method of the services it registers.

    The generated ``add_<Service>Servicer_to_server`` functions are given ``registrar()``
    instead of the server: each method handler is wrapped once, at registration. That costs
    nothing per call, unlike a grpc.aio ServerInterceptor, which runs a coroutine per call.
    """

    def __init__(self, tokens: TokenTable, metrics: RuntimeMetrics | None = None) -> None:
        self._tokens = tokens
        self._metrics = metrics or runtime_metrics()

    def _observe(self, method: str, started: float, code: str) -> None:
        self._metrics.grpc_handled.inc(method, code)
        self._metrics.grpc_latency.observe(method, value=time.perf_counter() - started)

    def registrar(self, server: aio.Server) -> WrappingRegistrar:
        return WrappingRegistrar(self, server)

    def _enter(
        self,
        needed: Role | None,
        method: str,
        request: Any,
        context: aio.ServicerContext[Any, Any],
    ) -> tuple[Any, tracing.TraceContext | None]:
        authorization: str | bytes | None = None
        traceparent: str | bytes | None = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value
            elif key == tracing.TRACEPARENT:
                traceparent = value
        token = None
        if needed is not None:
            principal = authorize_token(self._tokens, needed, method, parse_bearer(authorization))
            if isinstance(request, Undecodable):  # only callers who may call learn why
                raise bad_field("(request)", f"is not a valid {method} request: {request.error}")
            token = set_principal(principal)
        if traceparent is None:
            return token, None
        # The caller's trace continues here: this call is a child span of the caller's span.
        parent = tracing.from_grpc_metadata(((tracing.TRACEPARENT, traceparent),))
        if parent is None:
            return token, None
        opened = tracing.current()  # by the span interceptor, when spans are exported
        if opened is not None and opened.parent_span_id == parent.span_id:
            return token, None  # continue in the span it exports
        return token, parent.child()

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        deserializer = _lenient(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # no client-streaming methods in this API

    def _wrap_unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        needed = required_role(method)

        # Deadlines: when the caller's deadline passes, grpc cancels this coroutine, and the
        # Redis call it awaits is abandoned with it.
        async def wrapped(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            try:
                principal_token, ctx = self._enter(needed, method, request, context)
            except ControlPlaneError as error:
                self._observe(method, started, error.code.name)
                await _abort(context, error)
                return None
            failure: ControlPlaneError | None = None
            code = "OK"
            try:
                if ctx is None:
                    return await behavior(request, context)
                with tracing.use(ctx):
                    return await behavior(request, context)
            except ControlPlaneError as error:
                failure = error
            except aio.AbortError:
                code = _aborted_code(context)
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as exc:
                failure = _as_control_plane_error(method, exc)
            finally:
                if principal_token is not None:
                    reset_principal(principal_token)
                self._observe(method, started, failure.code.name if failure else code)
            await _abort(context, failure)
            return None

        return wrapped

    def _wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        needed = required_role(method)

        async def wrapped(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started = time.perf_counter()
            try:
                principal_token, ctx = self._enter(needed, method, request, context)
            except ControlPlaneError as error:
                self._observe(method, started, error.code.name)
                await _abort(context, error)
                return
            failure: ControlPlaneError | None = None
            code = "OK"
            try:
                with tracing.use(ctx) if ctx is not None else contextlib.nullcontext():
                    async for response in behavior(request, context):
                        yield response
            except ControlPlaneError as error:
                failure = error
            except aio.AbortError:
                code = _aborted_code(context)
                raise
            except (asyncio.CancelledError, GeneratorExit):
                code = "CANCELLED"  # the caller went away or its deadline passed
                raise
            except Exception as exc:
                failure = _as_control_plane_error(method, exc)
            finally:
                if principal_token is not None:
                    reset_principal(principal_token)
                self._observe(method, started, failure.code.name if failure else code)
            if failure is not None:
                await _abort(context, failure)

        return wrapped


def _aborted_code(context: aio.ServicerContext[Any, Any]) -> str:
    """The status a servicer aborted with (``context.abort``), by name."""
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A request body that did not parse; answered INVALID_ARGUMENT instead of INTERNAL."""

    error: str


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError and the like: the caller sent garbage
            return Undecodable(f"{type(exc).__name__}: {exc}")

    return parse


class WrappingRegistrar:
    """Stands in for the server in ``add_<Service>Servicer_to_server``; wraps each method."""

    def __init__(self, wrapper: CallWrapper, server: aio.Server) -> None:
        self._wrapper = wrapper
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: the same methods arrive, unwrapped, in add_registered_method_handlers."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        wrapped = {
            name: self._wrapper.wrap(f"/{service}/{name}", handler)
            for name, handler in handlers.items()
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, wrapped),)
        )
        self._server.add_registered_method_handlers(service, wrapped)
