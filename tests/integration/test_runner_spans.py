"""With span export on, a runner's spans link handler to outputs through the envelopes' ids."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from runtime.adapters.redis.bus import ENVELOPE_FIELD, EventBus
from runtime.adapters.redis.runner import DomainRunner, RunnerConfig
from runtime.core import otel
from runtime.core.envelope import decode_envelope
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from tests.integration.bus_support import running, wait_until
from tests.process.actors import FlakyTicks, tick

FAST = RunnerConfig(consumer_name="c1", block_ms=50, retry_base_ms=10, retry_cap_ms=40)


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    otel.configure(exporter, set_global=False)  # before the bus and runner are built
    yield exporter
    otel.shutdown()


def _ids(span: ReadableSpan) -> tuple[str, str, str]:
    assert span.context is not None
    parent = f"{span.parent.span_id:016x}" if span.parent is not None else ""
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}", parent


async def test_a_retried_handler_has_an_error_span_and_one_span_that_parents_its_outputs(
    exported: InMemorySpanExporter, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    metrics = RuntimeMetrics()
    bus = EventBus(aredis, keyspace, metrics=metrics)
    actor = FlakyTicks(fail_times={1: 1})
    async with running(DomainRunner(actor, aredis, keyspace, bus, FAST, metrics=metrics)):
        (sent,) = await bus.publish_many([tick("BTC", 1)])
        await wait_until(lambda: actor.handled == [1])
    await bus.close()
    ((_, fields),) = await aredis.xrange(keyspace.stream("portfolio.pnl.updated"))
    output = decode_envelope(fields[ENVELOPE_FIELD])
    otel.shutdown()  # flushes the batch processor into the exporter
    spans = exported.get_finished_spans()

    handled = [span for span in spans if span.name == "handle market.tick"]
    failed = [span for span in handled if span.status.status_code == StatusCode.ERROR]
    succeeded = [span for span in handled if span.status.status_code != StatusCode.ERROR]
    assert len(failed) == 1
    assert len(succeeded) == 1
    handler_id = otel.handler_span_id(sent.span_id, actor.name)
    assert _ids(succeeded[0]) == (sent.trace_id, handler_id, sent.span_id)
    assert succeeded[0].kind == SpanKind.CONSUMER
    assert _ids(failed[0])[1] != handler_id  # the derived id belongs to the success
    assert _ids(failed[0])[2] == sent.span_id

    (published,) = [span for span in spans if span.name == "publish portfolio.pnl.updated"]
    assert _ids(published) == (output.trace_id, output.span_id, handler_id)
    assert published.kind == SpanKind.PRODUCER
    assert published.attributes is not None
    assert published.attributes["quantum.domain"] == actor.name

    batches = [span for span in spans if span.name == "publish batch"]
    assert batches
    assert all(span.parent is None for span in batches)
    sizes = [(span.attributes or {}).get("messaging.batch.message_count", 0) for span in batches]
    # Only the tick went through the bus: the handler's output was stored by the runner's
    # commit, whose span is the `publish portfolio.pnl.updated` one above.
    assert sum(sizes) == 1
