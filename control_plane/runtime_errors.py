"""The runtime's own failures, translated to the statuses the control plane answers with."""

from __future__ import annotations

import grpc
import redis.exceptions

from control_plane.errors import ControlPlaneError, FieldViolation, Reason, invalid_argument
from runtime.core.policy.errors import PolicyUnavailable, PolicyValidationError, VersionConflict


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
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return ControlPlaneError(
            grpc.StatusCode.UNAVAILABLE,
            f"Redis is unreachable ({exc}); retry when it is back",
            Reason.REDIS_UNAVAILABLE,
        )
    if isinstance(exc, redis.exceptions.ResponseError) and "Invalid stream ID" in str(exc):
        # A backstop: requests are checked before they reach Redis, but if an id slips
        # through, the caller sent it, so the fault is theirs, not the server's.
        return invalid_argument(
            f"Redis rejected a stream entry id of the request: {exc}",
            [FieldViolation("entry_id", "is not a stream entry id Redis accepts")],
        )
    return None
