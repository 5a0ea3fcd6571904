"""OpenTelemetry export end to end: ``quantum run`` sends its spans to an OTLP/gRPC receiver.

The receiver is a real gRPC server, built from the opentelemetry-proto TraceService
definitions and started by the test on a free loopback port; it keeps every span it is sent.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from grpc import aio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from runtime.core.keys import Keyspace

ROOT = Path(__file__).resolve().parents[2]
DOMAINS = ("market_data", "ai_engine", "risk_safety", "execution", "portfolio", "analytics")
# The chain one trace must show, as the event types of its publish spans, root first.
CHAIN = (
    "market.tick",
    "ai.signal.generated",
    "risk.signal.approved",
    "execution.order.filled",
    "portfolio.position.",  # opened or closed
)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    service: str


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """Collects the spans of every ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests += 1
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(
                    _received(span, str(resource.get("service.name", "")))
                    for span in scope_spans.spans
                )
        return trace_service_pb2.ExportTraceServiceResponse()


def _attributes(items: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in items:
        which = item.value.WhichOneof("value")
        value = getattr(item.value, which) if which else None
        if which == "array_value":
            value = [getattr(v, v.WhichOneof("value")) for v in value.values]
        values[item.key] = value
    return values


def _received(span: Span, service: str) -> ReceivedSpan:
    return ReceivedSpan(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        name=span.name,
        kind=span.kind,
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        attributes=_attributes(span.attributes),
        service=service,
    )


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[TraceReceiver, int]]:
    server = aio.server()
    collector = TraceReceiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield collector, port
    await server.stop(grace=None)


def _environment(port: int) -> dict[str, str]:
    """The caller's environment without any OTEL_/QUANTUM_ variable, plus what the run needs."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "QUANTUM_"))
    }
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_EXPORTER_OTLP_INSECURE="true",
        OTEL_BSP_SCHEDULE_DELAY="200",
        OTEL_BSP_MAX_QUEUE_SIZE="200000",
        OTEL_SERVICE_NAME="quantum-otel-test",
    )
    return env


async def _quantum_run(redis_url: str, keyspace: Keyspace, state_dir: Path, port: int) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runtime.cli",
        "run",
        "--redis-url",
        redis_url,
        "--namespace",
        keyspace.namespace,
        "--state-dir",
        str(state_dir),
        "--grpc-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
        "--duration",
        "8",
        "--rate",
        "60",
        cwd=ROOT,
        env=_environment(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=100)
    assert process.returncode == 0, stderr.decode()[-3000:]
    return stdout.decode()


def _chain_to_root(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    chain = [span]
    while chain[-1].parent_span_id:
        parent = by_id.get(chain[-1].parent_span_id)
        assert parent is not None, f"span {chain[-1].name} names a parent that was not exported"
        chain.append(parent)
    return list(reversed(chain))


async def test_one_trace_shows_tick_to_position_across_all_six_domains(
    receiver: tuple[TraceReceiver, int], redis_server_url: str, keyspace: Keyspace, tmp_path: Path
) -> None:
    collector, port = receiver
    summary = await _quantum_run(redis_server_url, keyspace, tmp_path, port)
    assert "Quantum Trader run summary" in summary
    spans = collector.spans
    assert spans, "quantum run exported no spans"
    assert {span.service for span in spans} == {"quantum-otel-test"}

    # A trace that reached portfolio: a position event was published in it.
    positions = [
        span
        for span in spans
        if span.name.startswith("publish portfolio.position.")
        and span.attributes.get("quantum.domain") == "portfolio"
    ]
    assert positions, f"no position was published; span names: {sorted({s.name for s in spans})}"
    position = positions[0]
    trace = [span for span in spans if span.trace_id == position.trace_id]
    by_id = {span.span_id: span for span in trace}
    assert len(by_id) == len(trace), "span ids repeat within the trace"

    # Parent links: publish tick -> handle tick -> publish signal -> ... -> publish position.
    chain = _chain_to_root(position, by_id)
    publishes = [span for span in chain if span.name.startswith("publish ")]
    handles = [span for span in chain if span.name.startswith("handle ")]
    assert [s.attributes["quantum.event_type"] for s in publishes][:4] == list(CHAIN[:4])
    assert publishes[4].attributes["quantum.event_type"].startswith(CHAIN[4])
    assert [s.attributes["quantum.domain"] for s in publishes] == [
        "market_data",
        "ai_engine",
        "risk_safety",
        "execution",
        "portfolio",
    ]
    assert [s.attributes["quantum.domain"] for s in handles] == [
        "ai_engine",
        "risk_safety",
        "execution",
        "portfolio",
    ]
    assert [s.name.split()[0] for s in chain] == ["publish", "handle"] * 4 + ["publish"]
    assert chain[0].parent_span_id == "", "the tick's publish span is the trace's root"

    # Every domain took part in this one trace; every span has a duration.
    assert {span.attributes.get("quantum.domain") for span in trace} >= set(DOMAINS)
    analytics = [
        s
        for s in trace
        if s.attributes.get("quantum.domain") == "analytics" and s.name.startswith("handle ")
    ]
    assert analytics
    assert all(by_id[s.parent_span_id].name.startswith("publish portfolio.") for s in analytics)
    assert all(span.end_ns > span.start_ns > 0 for span in trace)
    # Along the chain each span starts after its parent: causes come before effects.
    for parent, child in itertools.pairwise(chain):
        assert child.start_ns >= parent.start_ns

    print(_tree(trace))

    # The event bus's round trips have spans of their own.
    batches = [span for span in spans if span.name == "publish batch"]
    assert batches
    assert all(span.attributes["messaging.batch.message_count"] >= 1 for span in batches)


def _tree(trace: list[ReceivedSpan]) -> str:
    """The trace as an indented tree with durations (printed; pytest shows it on failure)."""
    children: dict[str, list[ReceivedSpan]] = {}
    for span in sorted(trace, key=lambda s: s.start_ns):
        children.setdefault(span.parent_span_id, []).append(span)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in children.get(parent, []):
            micros = (span.end_ns - span.start_ns) / 1000
            domain = span.attributes.get("quantum.domain", "")
            lines.append(f"{'  ' * depth}{span.name} [{domain}] {micros:.0f} us")
            walk(span.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)


async def test_quantum_run_refuses_an_exporter_it_lacks_before_doing_anything(
    keyspace: Keyspace, tmp_path: Path
) -> None:
    env = _environment(port=4317)
    env["OTEL_TRACES_EXPORTER"] = "zipkin"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runtime.cli",
        "run",
        "--redis-url",
        "redis://127.0.0.1:1",  # never reached: the configuration fails first
        "--namespace",
        keyspace.namespace,
        "--state-dir",
        str(tmp_path),
        "--duration",
        "1",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert "OTEL_TRACES_EXPORTER='zipkin' is not supported" in stderr.decode()
