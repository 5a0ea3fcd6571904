"""The metrics an operator's dashboard reads, each seen through the real /metrics endpoint."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1._async import HealthServicer
from prometheus_client.parser import text_string_to_metric_families
from quantum.control.v1 import policy_service_pb2 as policy_pb
from quantum.control.v1.policy_service_pb2_grpc import PolicyServiceStub
from quantum.events.v1.portfolio_pb2 import PnlUpdated

from control_plane.health import ServingWatcher
from runtime.adapters.redis.operator_store import RedisOperatorStore
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics, runtime_metrics
from tests.control_plane.conftest import Harness, start_harness, stop_harness

GET_POLICY = "/quantum.control.v1.PolicyService/GetPolicy"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def scraped(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> AsyncIterator[Harness]:
    h = await start_harness(aredis, keyspace, tmp_path, metrics_addr="127.0.0.1:0")
    yield h
    await stop_harness(h)


async def scrape(h: Harness) -> Samples:
    assert h.plane.metrics is not None
    url = f"http://127.0.0.1:{h.plane.metrics.port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_process_and_platform_collectors_are_served(scraped: Harness) -> None:
    samples = await scrape(scraped)
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_cpu_seconds_total") > 0
    assert any(name == "python_info" for name, _ in samples)


async def test_grpc_calls_are_counted_by_method_and_code_and_timed(scraped: Harness) -> None:
    stub = PolicyServiceStub(scraped.channel)
    before = await scrape(scraped)
    await stub.GetPolicy(policy_pb.GetPolicyRequest(), metadata=scraped.viewer)
    await stub.GetPolicy(policy_pb.GetPolicyRequest(), metadata=scraped.viewer)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetPolicy(policy_pb.GetPolicyRequest())  # no token
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.SwitchMode(policy_pb.SwitchModeRequest(mode=3), metadata=scraped.viewer)
    after = await scrape(scraped)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    handled = "quantum_grpc_server_handled_total"
    assert delta(handled, method=GET_POLICY, code="OK") == 2
    assert delta(handled, method=GET_POLICY, code="UNAUTHENTICATED") == 1
    switch = "/quantum.control.v1.PolicyService/SwitchMode"
    assert delta(handled, method=switch, code="PERMISSION_DENIED") == 1
    assert delta("quantum_grpc_server_handling_seconds_count", method=GET_POLICY) == 3
    assert delta("quantum_grpc_server_handling_seconds_sum", method=GET_POLICY) > 0


async def test_account_figures_come_from_the_newest_pnl_update(scraped: Harness) -> None:
    for equity in ("100000", "101234.5"):
        await scraped.bus.publish(
            PnlUpdated(
                realized_pnl="1200.25",
                unrealized_pnl="34.25",
                equity=equity,
                peak_equity="102000",
                exposure="5000",
                drawdown="0.0075",
                daily_pnl="-12.5",
                open_positions=2,
                symbol="BTC-USD",
            ),
            partition_key="BTC-USD",
        )
    await scraped.bus.flush()
    await scraped.plane.figures.poll_once()
    samples = await scrape(scraped)
    assert value(samples, "quantum_portfolio_equity") == 101234.5
    assert value(samples, "quantum_portfolio_peak_equity") == 102000
    assert value(samples, "quantum_portfolio_realized_pnl") == 1200.25
    assert value(samples, "quantum_portfolio_unrealized_pnl") == 34.25
    assert value(samples, "quantum_portfolio_daily_pnl") == -12.5
    assert value(samples, "quantum_portfolio_exposure") == 5000
    assert value(samples, "quantum_portfolio_drawdown_ratio") == 0.0075
    assert value(samples, "quantum_portfolio_open_positions") == 2


async def test_a_pnl_update_with_a_non_finite_figure_leaves_that_gauge_alone(
    scraped: Harness,
) -> None:
    metrics = runtime_metrics()
    metrics.portfolio["equity"].set(value=123.0)
    await scraped.bus.publish(PnlUpdated(equity="NaN", drawdown="0.5", open_positions=1))
    await scraped.bus.flush()
    await scraped.plane.figures.poll_once()
    assert metrics.portfolio["equity"].value() == 123.0
    assert metrics.portfolio["drawdown_ratio"].value() == 0.5


async def test_component_health_and_drawdown_limit_are_served(scraped: Harness) -> None:
    await scraped.plane.figures.poll_once()
    samples = await scrape(scraped)
    assert value(samples, "quantum_component_health", component="redis") == 0
    assert ("quantum_component_health", frozenset({("component", "host")})) in samples
    # NORMAL's default drawdown limit, as a fraction.
    limit = scraped.store.get_policy().active_limits.max_drawdown_pct
    assert value(samples, "quantum_policy_max_drawdown_ratio") == pytest.approx(float(limit) / 100)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_redis_health_gauges_follow_ping(aredis: aioredis.Redis) -> None:
    metrics = RuntimeMetrics()
    watcher = ServingWatcher(
        HealthServicer(), RedisOperatorStore(aredis, Keyspace()), [], metrics=metrics
    )
    await watcher.check_once()
    assert metrics.redis_up.value() == 1
    assert 0 < metrics.redis_ping.value() < 1

    gone = aioredis.Redis(port=_closed_port(), socket_connect_timeout=0.5)
    lost = ServingWatcher(
        HealthServicer(),
        RedisOperatorStore(gone, Keyspace()),
        [],
        metrics=metrics,
        interval_s=0.2,
    )
    try:
        await lost.check_once()
    finally:
        await gone.aclose()
    assert metrics.redis_up.value() == 0
