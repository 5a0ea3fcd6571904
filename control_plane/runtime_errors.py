"""The runtime's own failures, translated to the statuses the control plane answers with.

Every Redis error reply has a documented status (README, Errors), so none is answered
INTERNAL: a request Redis rejects for its ids is INVALID_ARGUMENT; Redis busy, loading,
read-only or down is UNAVAILABLE (retry); out of memory is RESOURCE_EXHAUSTED; a Redis user
without the right (ACL NOPERM, NOAUTH, WRONGPASS) or a key of the wrong type is
FAILED_PRECONDITION (an operator must fix the server's setup); any other error reply is
FAILED_PRECONDITION with Redis's own message.
"""

from __future__ import annotations

import grpc

from control_plane.errors import ControlPlaneError, FieldViolation, Reason, invalid_argument
from runtime.adapters.nats.errors import NatsError, NatsUnreachable
from runtime.adapters.redis.errors import (
    AuthenticationError,
    BusyLoadingError,
    NoPermissionError,
    RedisError,
    RedisUnreachable,
    ResponseError,
)
from runtime.core.operator_store import OperationUnsupported, StoreContended
from runtime.core.policy.errors import PolicyUnavailable, PolicyValidationError, VersionConflict

# The broker (Redis or NATS) could not be reached or did not answer in time.
BrokerUnreachable: tuple[type[Exception], ...] = (*RedisUnreachable, *NatsUnreachable)


def translate(exc: BaseException) -> ControlPlaneError | None:
    """The status for a runtime error, or None when it is unexpected (answered INTERNAL)."""
    if isinstance(exc, ControlPlaneError):
        return exc
    if isinstance(exc, VersionConflict):
        return ControlPlaneError(
            grpc.StatusCode.ABORTED,
            str(exc),
            Reason.POLICY_VERSION_CONFLICT,
            {"expected_version": str(exc.expected), "current_version": str(exc.current)},
        )
    if isinstance(exc, PolicyValidationError):
        return invalid_argument(
            str(exc),
            [FieldViolation(v.field, v.description) for v in exc.violations],
            Reason.POLICY_INVALID,
        )
    if isinstance(exc, PolicyUnavailable):
        return ControlPlaneError(grpc.StatusCode.UNAVAILABLE, str(exc), Reason.POLICY_UNAVAILABLE)
    if isinstance(exc, AuthenticationError):  # a ConnectionError, but no outage
        return redis_reply_error(ResponseError(f"NOAUTH {exc}"))
    if isinstance(exc, RedisUnreachable):
        return ControlPlaneError(
            grpc.StatusCode.UNAVAILABLE,
            f"Redis is unreachable ({exc}); retry when it is back",
            Reason.REDIS_UNAVAILABLE,
        )
    if isinstance(exc, NatsUnreachable):
        return ControlPlaneError(
            grpc.StatusCode.UNAVAILABLE,
            f"NATS is unreachable ({type(exc).__name__}: {exc}); retry when it is back",
            Reason.BROKER_UNAVAILABLE,
        )
    if isinstance(exc, NatsError):
        return ControlPlaneError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"JetStream refused the request ({type(exc).__name__}: {exc})",
            Reason.BROKER_UNAVAILABLE,
        )
    if isinstance(exc, StoreContended):
        return ControlPlaneError(grpc.StatusCode.ABORTED, str(exc), Reason.STORE_CONTENDED)
    if isinstance(exc, OperationUnsupported):
        return ControlPlaneError(
            grpc.StatusCode.UNIMPLEMENTED, str(exc), Reason.OPERATION_UNSUPPORTED
        )
    if isinstance(exc, ResponseError):
        return redis_reply_error(exc)
    if isinstance(exc, RedisError):
        return ControlPlaneError(
            grpc.StatusCode.UNAVAILABLE,
            f"the Redis client failed ({type(exc).__name__}: {exc}); retry shortly",
            Reason.REDIS_UNAVAILABLE,
        )
    return None


_UNAVAILABLE_PREFIXES = ("BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY")
_DENIED_PREFIXES = ("NOPERM", "NOAUTH", "WRONGPASS")


def redis_reply_error(exc: ResponseError) -> ControlPlaneError:
    """The status of one Redis error reply (see the module doc)."""
    text = str(exc)
    code = text.split(" ", 1)[0].upper()
    if "stream ID" in text or "ID for the interval" in text:
        # A backstop: requests are checked before they reach Redis, but if an id slips
        # through, the caller sent it, so the fault is theirs, not the server's.
        return invalid_argument(
            f"Redis rejected a stream entry id of the request: {exc}",
            [FieldViolation("entry_id", "is not a stream entry id Redis accepts")],
        )
    if isinstance(exc, NoPermissionError):
        code = "NOPERM"
    if code.startswith(_UNAVAILABLE_PREFIXES) or isinstance(exc, BusyLoadingError):
        return ControlPlaneError(
            grpc.StatusCode.UNAVAILABLE,
            f"Redis cannot serve this now ({text}); retry shortly",
            Reason.REDIS_UNAVAILABLE,
        )
    if code.startswith("OOM"):
        return ControlPlaneError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Redis is out of memory ({text}); free memory or raise maxmemory, then retry",
            Reason.REDIS_OUT_OF_MEMORY,
        )
    if code.startswith(_DENIED_PREFIXES):
        return ControlPlaneError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"the control plane's Redis user may not do this ({text}); grant it in the "
            "Redis ACL (see the README's Redis ACL file)",
            Reason.REDIS_ACCESS_DENIED,
        )
    return ControlPlaneError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"Redis refused the operation ({text}); check the data under this namespace",
        Reason.REDIS_REJECTED,
    )
