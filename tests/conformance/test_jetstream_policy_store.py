"""The PolicyStore on a JetStream KV bucket: compare-and-set writes, the watch that carries a
change to every process, the history, and an outage (reads go on, writes fail clearly)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import pytest

from runtime.adapters.nats.engine import JetStreamEngine
from runtime.adapters.nats.policy_store import JetStreamPolicyStore
from runtime.core.policy import (
    PolicyHealth,
    PolicyReader,
    PolicyUnavailable,
    PolicyWriter,
    RiskMode,
    TradingState,
    VersionConflict,
)
from tests.conformance.harness_jetstream import JetStreamHarness


@pytest.fixture(scope="module")
def nats_server() -> Iterator[JetStreamHarness]:
    started = JetStreamHarness()
    yield started
    started.stop()


@pytest.fixture
async def engines(
    nats_server: JetStreamHarness, namespace: str
) -> AsyncIterator[list[JetStreamEngine]]:
    """Two engines on one namespace: two processes."""
    opened = [nats_server.open(namespace), nats_server.open(namespace)]
    assert all(isinstance(e, JetStreamEngine) for e in opened)
    yield opened  # type: ignore[misc]
    for engine in opened:
        await engine.close()


async def started(engine: JetStreamEngine) -> JetStreamPolicyStore:
    store = engine.policy_store(staleness_s=0.2)
    await store.start()
    return store


async def test_a_change_is_compare_and_set_and_reaches_every_process(
    engines: list[JetStreamEngine],
) -> None:
    one, other = await started(engines[0]), await started(engines[1])
    assert isinstance(one, PolicyReader)
    assert isinstance(one, PolicyWriter)
    assert one.get_policy().version == other.get_policy().version == 1

    changes = other.subscribe(include_current=False)
    waiting = asyncio.create_task(anext(changes))
    await asyncio.sleep(0.05)
    written = await one.switch_mode(
        RiskMode.DEFENSIVE, expected_version=1, changed_by="ops", reason="drawdown"
    )
    assert written.version == 2
    seen = await asyncio.wait_for(waiting, 5)  # the watch, well before the version check
    assert (seen.version, seen.mode) == (2, RiskMode.DEFENSIVE)
    assert other.get_policy().version == 2

    # The other process still believes version 1 is current for its write: refused.
    with pytest.raises(VersionConflict):
        await other.set_trading_state(
            TradingState.HALTED, expected_version=1, changed_by="ops", reason="stale view"
        )
    # Without an expected version it applies on top of whatever is current.
    halted = await other.set_trading_state(
        TradingState.HALTED, changed_by="analytics", reason="daily loss"
    )
    assert (halted.version, halted.mode, halted.trading_state) == (
        3,
        RiskMode.DEFENSIVE,
        TradingState.HALTED,
    )
    # A change to the value in force writes nothing.
    assert (
        await one.switch_mode(RiskMode.DEFENSIVE, changed_by="ops", reason="again")
    ).version == 3
    await changes.aclose()
    await one.stop()
    await other.stop()


async def test_the_history_says_who_changed_what_and_why_newest_first(
    engines: list[JetStreamEngine],
) -> None:
    store = await started(engines[0])
    await store.update(
        {"normal.max_leverage": Decimal("2")}, expected_version=1, changed_by="ops", reason="lower"
    )
    await store.switch_mode(RiskMode.AGGRESSIVE, changed_by="desk", reason="quiet market")
    records = await store.history()
    assert [r.version for r in records] == [3, 2, 1]
    assert [(r.changed_by, r.reason) for r in records[:2]] == [
        ("desk", "quiet market"),
        ("ops", "lower"),
    ]
    assert records[1].changed_fields == ("normal.max_leverage",)
    assert records[1].old_policy is not None
    assert records[1].old_policy.version == 1
    assert [r.version for r in await store.history(page_size=1, before_version=3)] == [2]
    await store.stop()


async def test_with_nats_down_reads_serve_the_last_policy_and_writes_fail_clearly(
    nats_server: JetStreamHarness, engines: list[JetStreamEngine]
) -> None:
    store = await started(engines[0])
    await store.switch_mode(RiskMode.NORMAL, changed_by="ops", reason="x")  # warm the bucket
    version = store.get_policy().version
    nats_server.kill()
    try:
        for _ in range(100):
            if store.health() is PolicyHealth.DEGRADED:
                break
            await asyncio.sleep(0.05)
        assert store.health() is PolicyHealth.DEGRADED
        assert store.get_policy().version == version
        with pytest.raises(PolicyUnavailable):
            await store.switch_mode(RiskMode.DEFENSIVE, changed_by="ops", reason="outage")
    finally:
        nats_server.restart()
    for _ in range(200):
        if store.health() is PolicyHealth.HEALTHY:
            break
        await asyncio.sleep(0.05)
    assert store.health() is PolicyHealth.HEALTHY
    written = await store.switch_mode(RiskMode.DEFENSIVE, changed_by="ops", reason="back")
    assert written.version == version + 1
    await store.stop()
