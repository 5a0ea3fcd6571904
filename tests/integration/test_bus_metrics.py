"""Guarantee 5: the runtime counts what it does, and samples lag and pending per group."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis

from runtime.adapters.redis.bus import EventBus
from runtime.adapters.redis.runner import DomainRunner, RunnerConfig, group_name
from runtime.core.backoff import Backoff
from runtime.core.keys import Keyspace
from runtime.core.metrics import MetricsRegistry, RuntimeMetrics, render_prometheus
from tests.integration.bus_support import running, wait_until
from tests.process.actors import FlakyTicks, TickCounter, tick


async def test_published_consumed_latency_retries_and_dead_letters_are_counted(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    metrics = RuntimeMetrics()
    bus = EventBus(aredis, keyspace, metrics=metrics)
    actor = FlakyTicks(fail_times={2: 1, 3: 100})
    config = RunnerConfig("c1", block_ms=50, max_deliveries=2, retry_base_ms=5, retry_cap_ms=10)
    async with running(DomainRunner(actor, aredis, keyspace, bus, config, metrics=metrics)):
        await bus.publish_many([tick("BTC", i) for i in (1, 2, 3, 4)])
        await wait_until(lambda: actor.handled == [1, 2, 4])
    await bus.close()

    assert metrics.published.value("market.tick") == 4
    assert metrics.published.value("portfolio.pnl.updated") == 3
    assert metrics.consumed.value("flaky_ticks", "market.tick") == 3
    assert metrics.handler_latency.count("flaky_ticks", "market.tick") == 3
    assert metrics.retries.value("flaky_ticks", "market.tick") == 2
    assert metrics.dead_letters.value("flaky_ticks", "handler_failed") == 1


async def test_lag_and_pending_per_group_are_sampled_from_xinfo_groups(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    metrics = RuntimeMetrics()
    bus = EventBus(aredis, keyspace, metrics=metrics)
    await bus.publish_many([tick("BTC", i) for i in range(1, 6)])
    config = RunnerConfig("c1", block_ms=20, group_stats_interval_s=0.05)
    actor = TickCounter()
    group = group_name(keyspace, actor.name)
    stream = keyspace.stream("market.tick")
    async with running(DomainRunner(actor, aredis, keyspace, bus, config, metrics=metrics)):
        await wait_until(lambda: actor.counts.get("BTC") == 5)
        await asyncio.sleep(0.2)
        assert metrics.pending.value(group, stream) == 0
        assert metrics.lag.value(group, stream) == 0
    await bus.close()


def test_a_snapshot_renders_as_prometheus_text() -> None:
    metrics = RuntimeMetrics(MetricsRegistry())
    metrics.consumed.inc("risk_safety", "ai.signal.generated", amount=3)
    metrics.handler_latency.observe("risk_safety", "ai.signal.generated", value=0.0003)
    metrics.lag.set("risk_safety", 'quantum:stream:"x"', value=7)
    text = render_prometheus(metrics.snapshot())
    assert (
        'quantum_events_consumed_total{domain="risk_safety",event_type="ai.signal.generated"} 3'
        in text
    )
    assert (
        'quantum_handler_latency_seconds_bucket{domain="risk_safety",'
        'event_type="ai.signal.generated",le="0.0005"} 1' in text
    )
    assert 'quantum_handler_latency_seconds_bucket{domain="risk_safety",' in text
    assert 'le="+Inf"} 1' in text
    assert 'quantum_consumer_lag{group="risk_safety",stream="quantum:stream:\\"x\\""} 7' in text
    assert "# TYPE quantum_handler_latency_seconds histogram" in text


def test_backoff_grows_exponentially_with_jitter_and_stays_under_the_cap() -> None:
    backoff = Backoff(base_s=0.1, cap_s=1.0, rng=random.Random(7))
    delays = [backoff.delay(attempt) for attempt in range(8)]
    assert all(0.05 <= d <= 1.0 for d in delays)
    assert delays[0] <= 0.1
    assert 0.5 <= delays[7] <= 1.0
    assert len({round(d, 6) for d in delays}) == len(delays)
    with pytest.raises(ValueError, match="base_s"):
        Backoff(base_s=0, cap_s=1)
