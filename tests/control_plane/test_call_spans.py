"""With span export on, every gRPC call is a SERVER span under the caller's ``traceparent``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from quantum.control.v1 import policy_service_pb2 as pb
from quantum.control.v1.policy_service_pb2_grpc import PolicyServiceStub
from quantum.events.v1 import policy_pb2

from runtime.core import otel
from runtime.core.envelope import decode_envelope
from runtime.core.keys import Keyspace
from tests.control_plane.conftest import Harness, start_harness, stop_harness

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SWITCH_MODE = "quantum.control.v1.PolicyService/SwitchMode"


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    otel.configure(exporter, set_global=False)
    yield exporter
    otel.shutdown()


@pytest.fixture
async def traced_harness(
    exported: InMemorySpanExporter, aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> AsyncIterator[Harness]:
    async with asyncio.timeout(30):
        running = await start_harness(aredis, keyspace, tmp_path)
    yield running
    await stop_harness(running)


def _finished(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    otel.shutdown()  # flushes the batch processor into the exporter
    return [span for span in exporter.get_finished_spans() if span.name == name]


async def test_a_call_is_a_server_span_child_of_the_callers_traceparent_and_parent_of_its_events(
    traced_harness: Harness, exported: InMemorySpanExporter
) -> None:
    metadata = (
        *traced_harness.operator,
        ("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"),
    )
    await PolicyServiceStub(traced_harness.channel).SwitchMode(
        pb.SwitchModeRequest(mode=policy_pb2.RISK_MODE_DEFENSIVE, reason="spans"),
        metadata=metadata,
    )
    entries = await traced_harness.redis.xrange(
        traced_harness.keyspace.stream("policy.updated"), count=10
    )

    (span,) = _finished(exported, SWITCH_MODE)
    assert span.kind == SpanKind.SERVER
    assert span.context is not None
    assert span.parent is not None
    assert f"{span.context.trace_id:032x}" == CALLER_TRACE
    assert f"{span.parent.span_id:016x}" == CALLER_SPAN
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert span.end_time is not None
    assert span.start_time is not None
    assert span.end_time > span.start_time
    # The policy change the call published names the call's span as its parent.
    envelope = decode_envelope(entries[-1][1][b"envelope"])  # after the initial policy
    assert envelope.trace_id == CALLER_TRACE
    assert envelope.parent_span_id == f"{span.context.span_id:016x}"


async def test_a_refused_call_is_a_span_with_its_status_code(
    traced_harness: Harness, exported: InMemorySpanExporter
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await PolicyServiceStub(traced_harness.channel).SwitchMode(
            pb.SwitchModeRequest(mode=policy_pb2.RISK_MODE_DEFENSIVE, reason="no token")
        )
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED

    (span,) = _finished(exported, SWITCH_MODE)
    assert span.parent is None  # no traceparent: the call starts a trace of its own
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert span.status.status_code == StatusCode.ERROR
