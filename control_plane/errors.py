"""Errors the control plane answers with: a gRPC code plus the standard rich details.

Every error carries a ``google.rpc.ErrorInfo`` whose ``reason`` is a stable UPPER_SNAKE_CASE
code (AIP-193) that programs can switch on; bad requests add a ``google.rpc.BadRequest``
naming each offending field. Servicers raise ``ControlPlaneError``; the interceptor turns it
(and the runtime's own typed errors) into the status sent on the wire.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "control.quantum-trader"


class Reason:
    """The stable ``ErrorInfo.reason`` codes of this API."""

    TOKEN_MISSING = "TOKEN_MISSING"
    TOKEN_INVALID = "TOKEN_INVALID"
    ROLE_INSUFFICIENT = "ROLE_INSUFFICIENT"
    INVALID_REQUEST = "INVALID_REQUEST"
    POLICY_INVALID = "POLICY_INVALID"
    POLICY_VERSION_CONFLICT = "POLICY_VERSION_CONFLICT"
    POLICY_UNAVAILABLE = "POLICY_UNAVAILABLE"
    POLICY_VERSION_AHEAD = "POLICY_VERSION_AHEAD"
    REDIS_UNAVAILABLE = "REDIS_UNAVAILABLE"
    REDIS_OUT_OF_MEMORY = "REDIS_OUT_OF_MEMORY"
    REDIS_ACCESS_DENIED = "REDIS_ACCESS_DENIED"
    REDIS_REJECTED = "REDIS_REJECTED"
    BROKER_UNAVAILABLE = "BROKER_UNAVAILABLE"
    OPERATION_UNSUPPORTED = "OPERATION_UNSUPPORTED"
    STORE_CONTENDED = "STORE_CONTENDED"
    DOMAIN_UNKNOWN = "DOMAIN_UNKNOWN"
    TRACE_NOT_FOUND = "TRACE_NOT_FOUND"
    DEAD_LETTER_NOT_FOUND = "DEAD_LETTER_NOT_FOUND"
    SUBSCRIBER_TOO_SLOW = "SUBSCRIBER_TOO_SLOW"
    PUBLISHER_UNAVAILABLE = "PUBLISHER_UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: its path (``policy.normal.max_leverage``) and why."""

    field: str
    description: str


@dataclass
class ControlPlaneError(Exception):
    """An RPC failure a person or program can act on."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: Sequence[FieldViolation] = ()

    def __str__(self) -> str:
        return self.message

    def to_status(self) -> grpc.Status:
        """The ``grpc.Status`` with ErrorInfo (and BadRequest) in its details."""
        return rich_status(
            self.code, self.message, self.reason, self.metadata, violations=self.violations
        )


def invalid_argument(
    message: str,
    violations: Sequence[FieldViolation],
    reason: str = Reason.INVALID_REQUEST,
) -> ControlPlaneError:
    """INVALID_ARGUMENT naming each bad field."""
    return ControlPlaneError(
        grpc.StatusCode.INVALID_ARGUMENT, message, reason, violations=tuple(violations)
    )


def bad_field(field_path: str, description: str) -> ControlPlaneError:
    """INVALID_ARGUMENT for one bad field, with the description as the message."""
    return invalid_argument(
        f"{field_path}: {description}", [FieldViolation(field_path, description)]
    )


def rich_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: Mapping[str, str] | None = None,
    *,
    violations: Sequence[FieldViolation] = (),
) -> grpc.Status:
    """Build a status carrying google.rpc ErrorInfo and, when given, BadRequest."""
    details: list[any_pb2.Any] = []
    info = error_details_pb2.ErrorInfo(
        reason=reason, domain=ERROR_DOMAIN, metadata=dict(metadata or {})
    )
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    status = status_pb2.Status(code=_CODE_NUMBERS[code], message=message, details=details)
    result: grpc.Status = rpc_status.to_status(status)
    return result


_CODE_NUMBERS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: code_pb2.OK,
    grpc.StatusCode.CANCELLED: code_pb2.CANCELLED,
    grpc.StatusCode.UNKNOWN: code_pb2.UNKNOWN,
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.DEADLINE_EXCEEDED: code_pb2.DEADLINE_EXCEEDED,
    grpc.StatusCode.NOT_FOUND: code_pb2.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: code_pb2.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED: code_pb2.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE: code_pb2.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED: code_pb2.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL: code_pb2.INTERNAL,
    grpc.StatusCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS: code_pb2.DATA_LOSS,
    grpc.StatusCode.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
}
