"""What happens around every RPC: auth, trace context, deadlines and error mapping.

One server interceptor wraps each method's behaviour once (cached by method name), so the
per-call cost is a metadata scan and a few context-variable sets. Inside the wrapper:

- the bearer token is checked against the role the method needs (``auth``);
- the caller's ``traceparent`` becomes the parent of this call's span (``runtime.core.tracing``),
  so every log line of the call carries its trace id;
- a unary call runs under the caller's deadline;
- typed errors become rich statuses (``errors``); anything unexpected becomes INTERNAL with
  a log line, never UNKNOWN.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from control_plane.auth import (
    TokenTable,
    authorize,
    required_role,
    reset_principal,
    set_principal,
)
from control_plane.errors import ControlPlaneError, Reason
from control_plane.runtime_errors import translate
from runtime.core import tracing
from runtime.core.logs import get_logger

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


class CallWrapper(aio.ServerInterceptor):  # type: ignore[misc]
    """Adds auth, tracing, deadlines and error mapping to every method of the server."""

    def __init__(self, tokens: TokenTable) -> None:
        self._tokens = tokens
        self._cache: dict[str, grpc.RpcMethodHandler | None] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method in self._cache:
            cached = self._cache[method]
            if cached is not None:
                return cached
        handler = await continuation(handler_call_details)
        if required_role(method) is None:
            # Health and reflection: open to all, and served exactly as their libraries say.
            self._cache[method] = handler
            return handler
        wrapped = self._wrap(method, handler) if handler is not None else None
        self._cache[method] = wrapped
        return wrapped if wrapped is not None else handler

    def _enter(
        self, method: str, context: aio.ServicerContext[Any, Any]
    ) -> tuple[Any, tracing.TraceContext]:
        metadata = context.invocation_metadata()
        principal = authorize(self._tokens, method, metadata)
        token = set_principal(principal) if principal is not None else None
        parent = tracing.from_grpc_metadata(metadata)
        return token, parent.child() if parent is not None else tracing.new_trace()

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # no client-streaming methods in this API

    def _wrap_unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        async def wrapped(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            try:
                principal_token, ctx = self._enter(method, context)
            except ControlPlaneError as error:
                await _abort(context, error)
                return None
            failure: ControlPlaneError | None = None
            try:
                with tracing.use(ctx):
                    remaining = context.time_remaining()
                    if remaining is None:
                        return await behavior(request, context)
                    async with asyncio.timeout(max(remaining, 0.0)):
                        return await behavior(request, context)
            except ControlPlaneError as error:
                failure = error
            except TimeoutError:
                failure = ControlPlaneError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"{method} did not finish within the caller's deadline",
                    Reason.DEADLINE_EXCEEDED,
                )
            except aio.AbortError:
                raise
            except Exception as exc:
                failure = _as_control_plane_error(method, exc)
            finally:
                if principal_token is not None:
                    reset_principal(principal_token)
            await _abort(context, failure)
            return None

        return wrapped

    def _wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        async def wrapped(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                principal_token, ctx = self._enter(method, context)
            except ControlPlaneError as error:
                await _abort(context, error)
                return
            failure: ControlPlaneError | None = None
            try:
                with tracing.use(ctx):
                    async for response in behavior(request, context):
                        yield response
            except ControlPlaneError as error:
                failure = error
            except aio.AbortError:
                raise
            except Exception as exc:
                failure = _as_control_plane_error(method, exc)
            finally:
                if principal_token is not None:
                    reset_principal(principal_token)
            if failure is not None:
                await _abort(context, failure)

        return wrapped
