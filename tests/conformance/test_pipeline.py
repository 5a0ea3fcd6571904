"""The six domains end to end on every engine: the recorded feed's ticks, split in partitions
by symbol, go through ai_engine, risk_safety, execution, portfolio and analytics, and the
signals are those of the deterministic backtest of the same recording (signals depend only
on each symbol's ticks in order, which every engine keeps)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from quantum.events.v1.envelope_pb2 import Envelope

from runtime.backtest import run_backtest
from runtime.backtest.engine import build_actors, recorded_ticks
from runtime.core.delivery import RunnerConfig
from runtime.core.engine import ActorHost
from runtime.core.envelope import open_payload
from runtime.core.metrics import RuntimeMetrics
from runtime.core.partitioning import Partitioning
from runtime.core.policy.defaults import default_policy
from runtime.core.policy.memory import InMemoryPolicy
from tests.conformance.harness import Harness

ROOT = Path(__file__).resolve().parents[2]
FEED = ROOT / "tests" / "fixtures" / "ticks_small.csv"
SIGNALS = "ai.signal.generated"
PARTITIONS = Partitioning({"market.tick": 4, SIGNALS: 2})


def by_symbol(envelopes: list[Envelope]) -> dict[str, list[bytes]]:
    """Each symbol's signals in order, without their ids."""
    found: dict[str, list[bytes]] = {}
    for envelope in envelopes:
        payload = open_payload(envelope)
        payload.ClearField("signal_id")
        found.setdefault(envelope.partition_key, []).append(
            payload.SerializeToString(deterministic=True)
        )
    return found


async def test_the_pipeline_on_this_engine_generates_the_backtests_signals(
    harness: Harness, namespace: str
) -> None:
    expected_events = list((await run_backtest(FEED, equity=Decimal(100_000))).events())
    expected = by_symbol([e for e in expected_events if e.event_type == SIGNALS])
    assert sum(len(v) for v in expected.values()) > 0

    engine = harness.open(namespace, PARTITIONS)
    publisher = engine.publisher(producer="market_data", metrics=RuntimeMetrics())
    policy = InMemoryPolicy(default_policy(), clock=lambda: datetime.now(UTC))
    actors, _portfolio = build_actors(policy, Decimal(100_000))
    config = RunnerConfig(consumer_name="e2e", block_ms=50, lease_ttl_ms=1_000)
    host = ActorHost(engine, actors, publisher, config, metrics=RuntimeMetrics())
    running = asyncio.create_task(host.run())
    try:
        await publisher.publish_envelopes(recorded_ticks(FEED, seed=0))
        signals: dict[str, list[bytes]] = {}
        fills: list[tuple[str, bytes]] = []
        for _ in range(600):
            stored = [
                Envelope.FromString(data)
                for topic in PARTITIONS.topics(SIGNALS)
                for _, data in await engine.read(topic)
            ]
            # Unsorted: a symbol's signals live in one partition, in the order they were made.
            signals = by_symbol(stored)
            # The fills come a few hops after the last signal (risk, then execution).
            fills = await engine.read("execution.order.filled")
            if signals == expected and fills:
                break
            await asyncio.sleep(0.05)
    finally:
        host.stop()
        await running
        await publisher.close()
        await engine.close()
    assert signals == expected
    assert fills, "no order was filled: the signals went nowhere"
