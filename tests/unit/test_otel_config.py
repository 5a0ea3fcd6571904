"""Span export is opt-in: which OTEL_* variables turn it on, and what it costs when off."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from opentelemetry import trace as otel_trace

from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.runner import DomainRunner, RunnerConfig
from runtime.core import otel, tracing
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from tests.process.actors import TickCounter


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector.internal:4317"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "127.0.0.1:4317"},
        {"OTEL_TRACES_EXPORTER": "otlp"},
        {"OTEL_TRACES_EXPORTER": "OTLP", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    ],
)
def test_an_otlp_endpoint_or_exporter_turns_export_on(environ: dict[str, str]) -> None:
    assert otel.export_requested(environ)


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_SERVICE_NAME": "quantum", "OTEL_BSP_SCHEDULE_DELAY": "100"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "  "},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_without_an_endpoint_or_when_disabled_export_stays_off(environ: dict[str, str]) -> None:
    assert not otel.export_requested(environ)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin'"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "OTEL_EXPORTER_OTLP_PROTOCOL='http/protobuf'",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://host:21"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://host:port"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ],
)
def test_what_this_process_cannot_export_is_refused_naming_the_variable(
    environ: dict[str, str], named: str
) -> None:
    with pytest.raises(otel.OtelConfigError, match=named):
        otel.export_requested(environ)


def test_handler_span_ids_are_per_event_and_domain() -> None:
    span = "00f067aa0ba902b7"
    assert otel.handler_span_id(span, "portfolio") == otel.handler_span_id(span, "portfolio")
    assert otel.handler_span_id(span, "portfolio") != otel.handler_span_id(span, "execution")
    assert otel.handler_span_id(span, "portfolio") != span


async def test_without_otel_variables_nothing_is_installed_and_the_hot_path_is_untouched(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    assert otel.configure_from_env({}) is False
    assert otel.ENABLED is False
    assert isinstance(otel_trace.get_tracer_provider(), otel_trace.ProxyTracerProvider)
    # The hooks kept the plain callables: per event and per batch, no OpenTelemetry code runs.
    bus = EventBus(aredis, keyspace, metrics=RuntimeMetrics())
    runner = DomainRunner(
        TickCounter(), aredis, keyspace, bus, RunnerConfig("c1"), metrics=RuntimeMetrics()
    )
    assert runner._dispatch == runner._dispatcher.dispatch
    assert runner._traced_commit is None
    assert bus._send_batch == bus._send
    assert tracing.opentelemetry_bridge() is False
