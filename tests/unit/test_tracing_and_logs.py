"""Trace context across tasks and threads, propagation, and trace ids on every log line."""

from __future__ import annotations

import asyncio
import contextvars
import io
import threading
from collections.abc import Iterator

import orjson
import pytest
import structlog

from runtime.core import tracing
from runtime.core.logs import configure_logging, get_logger


@pytest.fixture
def log_lines() -> Iterator[io.BytesIO]:
    buffer = io.BytesIO()
    configure_logging("DEBUG", stream=buffer)
    yield buffer
    structlog.reset_defaults()


def _parse(buffer: io.BytesIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in buffer.getvalue().splitlines() if line]


def test_log_line_inside_a_trace_carries_its_ids(log_lines: io.BytesIO) -> None:
    log = get_logger("test")
    with tracing.span() as ctx:
        log.info("order.checked", symbol="BTC-USD")
    log.info("outside")
    inside, outside = _parse(log_lines)
    assert inside["event"] == "order.checked"
    assert inside["trace_id"] == ctx.trace_id
    assert inside["span_id"] == ctx.span_id
    assert inside["symbol"] == "BTC-USD"
    assert inside["level"] == "info"
    assert "trace_id" not in outside


async def test_concurrent_tasks_keep_their_own_ids(log_lines: io.BytesIO) -> None:
    log = get_logger("test")
    seen: dict[str, str] = {}

    async def work(name: str) -> None:
        with tracing.span() as ctx:
            seen[name] = ctx.trace_id
            for _ in range(3):
                await asyncio.sleep(0)
                log.info("step", task=name)
                assert tracing.current() == ctx

    await asyncio.gather(work("a"), work("b"))
    assert seen["a"] != seen["b"]
    lines = _parse(log_lines)
    assert len(lines) == 6
    for line in lines:
        assert line["trace_id"] == seen[str(line["task"])]


def test_thread_given_a_copied_context_sees_the_callers_ids(log_lines: io.BytesIO) -> None:
    log = get_logger("test")
    seen: list[tracing.TraceContext | None] = []

    def in_thread() -> None:
        seen.append(tracing.current())
        log.info("from.thread")

    with tracing.span() as ctx:
        thread = threading.Thread(target=contextvars.copy_context().run, args=(in_thread,))
        thread.start()
        thread.join()
        bare = threading.Thread(target=lambda: seen.append(tracing.current()))
        bare.start()
        bare.join()
    assert seen == [ctx, None]
    (line,) = _parse(log_lines)
    assert line["trace_id"] == ctx.trace_id


async def test_to_thread_carries_the_context() -> None:
    with tracing.span() as ctx:
        assert await asyncio.to_thread(tracing.current) == ctx


def test_child_span_keeps_trace_and_links_parent() -> None:
    with tracing.span() as root, tracing.span() as child:
        assert child.trace_id == root.trace_id
        assert child.parent_span_id == root.span_id
        assert child.span_id != root.span_id
    assert tracing.current() is None


def test_inject_and_extract_round_trip_through_a_dict_carrier() -> None:
    ctx = tracing.new_trace()
    carrier: dict[str, str] = {}
    tracing.inject(carrier, ctx)
    assert carrier == {"traceparent": f"00-{ctx.trace_id}-{ctx.span_id}-01"}
    extracted = tracing.extract(carrier)
    assert extracted is not None
    assert (extracted.trace_id, extracted.span_id) == (ctx.trace_id, ctx.span_id)


def test_grpc_metadata_round_trip() -> None:
    ctx = tracing.new_trace()
    metadata = (("authorization", "Bearer x"), *tracing.to_grpc_metadata(ctx))
    extracted = tracing.from_grpc_metadata(metadata)
    assert extracted is not None
    assert extracted.trace_id == ctx.trace_id


def test_otel_api_sees_the_current_span() -> None:
    from opentelemetry import trace as otel_trace

    with tracing.span() as ctx:
        span_context = otel_trace.get_current_span().get_span_context()
        assert f"{span_context.trace_id:032x}" == ctx.trace_id
        assert f"{span_context.span_id:016x}" == ctx.span_id


@pytest.mark.parametrize(
    "carrier",
    [{}, {"traceparent": "garbage"}, {"traceparent": "00-" + "0" * 32 + "-" + "1" * 16 + "-01"}],
)
def test_extract_ignores_missing_or_malformed_traceparent(carrier: dict[str, str]) -> None:
    assert tracing.extract(carrier) is None


def test_trace_context_rejects_bad_ids() -> None:
    with pytest.raises(ValueError, match="trace id"):
        tracing.TraceContext(trace_id="xyz", span_id="1" * 16)
    with pytest.raises(ValueError, match="span id"):
        tracing.TraceContext(trace_id="1" * 32, span_id="0" * 16)


def test_unknown_log_level_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("LOUD")
