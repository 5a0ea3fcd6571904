"""The client's own trace-context and error-detail code agrees with the server's."""

from __future__ import annotations

import grpc
import pytest

from clients.trace_context import current_trace_metadata, format_traceparent
from clients.wire_errors import FieldViolation as ClientViolation
from clients.wire_errors import details_of
from control_plane.errors import FieldViolation, Reason, rich_status
from runtime.core import tracing


def test_a_call_inside_a_runtime_span_carries_that_span() -> None:
    with tracing.span() as ctx:
        assert current_trace_metadata() == (("traceparent", ctx.traceparent),)
    assert current_trace_metadata() == ()


def test_format_traceparent_matches_the_runtime_and_rejects_bad_ids() -> None:
    ctx = tracing.new_trace()
    assert format_traceparent(ctx.trace_id, ctx.span_id) == ctx.traceparent
    assert format_traceparent(ctx.trace_id, ctx.span_id, sampled=False).endswith("-00")
    with pytest.raises(ValueError, match="trace id"):
        format_traceparent("XYZ", ctx.span_id)
    with pytest.raises(ValueError, match="span id"):
        format_traceparent(ctx.trace_id, "0" * 16)


class _FailedCall(grpc.RpcError):
    """A failed call as grpc hands it to a client: code, message, trailing metadata."""

    def __init__(self, status: grpc.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return tuple(self._status.trailing_metadata)


def test_the_client_decodes_what_the_server_encodes() -> None:
    status = rich_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad limits",
        Reason.POLICY_INVALID,
        {"mode": "normal"},
        violations=[FieldViolation("policy.normal.max_leverage", "must be positive")],
    )
    details = details_of(_FailedCall(status))
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.message == "bad limits"
    assert details.reason == "POLICY_INVALID"
    assert dict(details.metadata) == {"mode": "normal"}
    assert details.violations == (
        ClientViolation("policy.normal.max_leverage", "must be positive"),
    )
