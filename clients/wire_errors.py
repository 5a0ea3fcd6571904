"""Reading the control plane's rich errors off the wire: google.rpc ErrorInfo and BadRequest.

The client's own copy of the decoding, built on grpcio-status and googleapis-common-protos
alone: clients speak only the wire protocol and import nothing of the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: its path (``policy.normal.max_leverage``) and why."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class ErrorDetails:
    """A failed call as the server described it: code, message, reason and bad fields."""

    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: Mapping[str, str]
    violations: tuple[FieldViolation, ...]


def details_of(error: grpc.RpcError) -> ErrorDetails:
    """Read ErrorInfo and BadRequest out of a failed call (empty when it carries none)."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    reason, domain, metadata = "", "", {}
    violations: list[FieldViolation] = []
    status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad_request.field_violations
                )
    return ErrorDetails(code, message, reason, domain, metadata, tuple(violations))
