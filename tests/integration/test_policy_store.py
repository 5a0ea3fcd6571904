"""PolicyStore against a real Redis, in one process: writes, conflicts, events, history, cache."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from quantum.events.v1 import policy_pb2

from runtime.adapters.redis.policy_store import PolicyStore
from runtime.core import tracing
from runtime.core.envelope import decode_envelope, open_payload
from runtime.core.keys import Keyspace
from runtime.core.metrics import MetricsRegistry
from runtime.core.policy import (
    Policy,
    PolicyHealth,
    PolicyReader,
    PolicyValidationError,
    PolicyWriter,
    RiskMode,
    TradingState,
    VersionConflict,
    apply_changes,
    policy_to_proto,
    record_from_proto,
    record_to_proto,
)
from runtime.core.policy.metrics import policy_metrics

StoreFactory = Callable[..., Awaitable[PolicyStore]]


@pytest.fixture
async def make_store(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """Starts PolicyStores on the test's namespace; stops them all after the test."""
    stores: list[PolicyStore] = []

    async def make(**options: object) -> PolicyStore:
        options.setdefault("state_dir", tmp_path / f"state-{len(stores)}")
        store = PolicyStore(aredis, keyspace, **options)  # type: ignore[arg-type]
        await store.start()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.stop()


async def stream_events(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> list[tuple[bytes, policy_pb2.PolicyUpdated]]:
    entries = await aredis.xrange(keyspace.stream("policy.updated"))
    events = []
    for entry_id, fields in entries:
        payload = open_payload(decode_envelope(fields[b"envelope"]))
        assert isinstance(payload, policy_pb2.PolicyUpdated)
        events.append((entry_id, payload))
    return events


async def eventually(check: Callable[[], bool], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.01)
    return check()


async def test_an_empty_redis_starts_with_the_defaults_as_version_1(
    make_store: StoreFactory, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    store = await make_store()
    policy = store.get_policy()
    assert (policy.version, policy.mode, policy.trading_state) == (
        1,
        RiskMode.NORMAL,
        TradingState.ACTIVE,
    )
    assert store.health() is PolicyHealth.HEALTHY
    [(_, event)] = await stream_events(aredis, keyspace)
    assert event.policy == policy_to_proto(policy)
    [record] = await store.history()
    assert (record.version, record.changed_by, record.old_policy) == (1, "policy_store", None)


async def test_the_store_is_a_policy_reader_and_writer(make_store: StoreFactory) -> None:
    store = await make_store()
    assert isinstance(store, PolicyReader)
    assert isinstance(store, PolicyWriter)


async def test_reads_return_one_immutable_snapshot_until_a_change(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    first = store.get_policy()
    assert store.get_policy() is first
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.version = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        first.limits[RiskMode.NORMAL] = first.limits[RiskMode.DEFENSIVE]  # type: ignore[index]
    changed = await store.switch_mode(RiskMode.DEFENSIVE, changed_by="test", reason="drill")
    assert store.get_policy() is changed
    assert first.mode is RiskMode.NORMAL


async def test_a_write_with_the_current_version_bumps_it_and_records_who_and_why(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    policy = await store.switch_mode(
        RiskMode.DEFENSIVE, expected_version=1, changed_by="operator:alice", reason="drawdown"
    )
    assert (policy.version, policy.mode, policy.updated_by, policy.reason) == (
        2,
        RiskMode.DEFENSIVE,
        "operator:alice",
        "drawdown",
    )
    assert policy.active_limits is policy.limits[RiskMode.DEFENSIVE]
    assert policy.updated_at is not None


async def test_a_stale_expected_version_fails_naming_current_and_expected(
    make_store: StoreFactory, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    store = await make_store()
    await store.set_trading_state(TradingState.REDUCING, changed_by="test", reason="one")
    with pytest.raises(VersionConflict) as caught:
        await store.set_trading_state(
            TradingState.HALTED, expected_version=1, changed_by="test", reason="two"
        )
    assert (caught.value.expected, caught.value.current) == (1, 2)
    assert "expected version 1" in str(caught.value)
    assert "current version is 2" in str(caught.value)
    assert store.get_policy().trading_state is TradingState.REDUCING
    assert len(await stream_events(aredis, keyspace)) == 2


async def test_an_invalid_change_writes_nothing(
    make_store: StoreFactory, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    store = await make_store()
    with pytest.raises(PolicyValidationError) as caught:
        await store.update(
            {"normal.max_leverage": Decimal("0.5"), "normal.allowed_symbols": []},
            changed_by="test",
            reason="bad",
        )
    assert {v.field for v in caught.value.violations} == {
        "normal.max_leverage",
        "normal.allowed_symbols",
    }
    with pytest.raises(PolicyValidationError, match="changed_by"):
        await store.switch_mode(RiskMode.DEFENSIVE, changed_by=" ", reason="anonymous")
    assert store.get_policy().version == 1
    assert len(await stream_events(aredis, keyspace)) == 1


async def test_a_change_that_alters_nothing_writes_nothing(
    make_store: StoreFactory, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    store = await make_store()
    policy = await store.switch_mode(RiskMode.NORMAL, changed_by="analytics", reason="again")
    assert policy.version == 1
    assert len(await stream_events(aredis, keyspace)) == 1


async def test_each_write_puts_its_event_on_the_stream_and_in_the_trace_index(
    make_store: StoreFactory, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    store = await make_store()
    trace = tracing.new_trace()
    with tracing.use(trace):
        policy = await store.update(
            {"defensive.max_leverage": "1.5", "mode": "DEFENSIVE"},
            expected_version=1,
            changed_by="operator:bob",
            reason="hedge",
        )
    entry_id, fields = (await aredis.xrange(keyspace.stream("policy.updated")))[-1]
    envelope = decode_envelope(fields[b"envelope"])
    assert (envelope.event_type, envelope.producer, envelope.trace_id) == (
        "policy.updated",
        "policy_store",
        trace.trace_id,
    )
    event = open_payload(envelope)
    assert isinstance(event, policy_pb2.PolicyUpdated)
    assert event.policy == policy_to_proto(policy)
    assert event.previous_version == 1
    assert list(event.changed_fields) == ["mode", "defensive.max_leverage"]
    assert (event.changed_by, event.reason) == ("operator:bob", "hedge")
    assert await aredis.lrange(keyspace.trace(trace.trace_id), 0, -1) == [fields[b"envelope"]]
    assert await aredis.ttl(keyspace.trace(trace.trace_id)) > 0
    assert await aredis.hget(keyspace.policy(), "event_id") == entry_id


async def test_history_pages_newest_first_with_old_and_new_policy(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    for leverage in ("2", "2.5", "4", "5"):
        await store.update(
            {"normal.max_leverage": leverage}, changed_by="test", reason=f"to {leverage}"
        )
    first = await store.history(page_size=2)
    second = await store.history(page_size=2, before_version=first[-1].version)
    third = await store.history(page_size=2, before_version=second[-1].version)
    assert [r.version for r in (*first, *second, *third)] == [5, 4, 3, 2, 1]
    latest = first[0]
    assert (latest.previous_version, latest.changed_fields, latest.reason) == (
        4,
        ("normal.max_leverage",),
        "to 5",
    )
    assert latest.old_policy is not None
    assert latest.old_policy.limits[RiskMode.NORMAL].max_leverage == Decimal(4)
    assert latest.new_policy == store.get_policy()
    assert record_from_proto(record_to_proto(latest)) == latest
    with pytest.raises(PolicyValidationError, match="page_size"):
        await store.history(page_size=0)


async def test_state_and_event_never_disagree_under_concurrent_writers(
    make_store: StoreFactory, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    stores = [await make_store() for _ in range(3)]
    mismatches: list[str] = []
    done = asyncio.Event()

    async def write(store: PolicyStore, index: int) -> None:
        for step in range(12):
            await store.update(
                {"normal.max_position_notional": 20000 + index * 100 + step},
                changed_by=f"writer-{index}",
                reason="load",
            )

    async def audit() -> None:
        # Whatever version a reader sees in Redis, its event is already on the stream.
        while not done.is_set():
            version, raw = await aredis.hmget(keyspace.policy(), ["version", "policy"])
            events = {e.policy.version: e for _, e in await stream_events(aredis, keyspace)}
            event = events.get(int(version))
            if event is None or event.policy.SerializeToString(deterministic=True) != raw:
                mismatches.append(f"version {int(version)} without its event")
            await asyncio.sleep(0.001)

    auditor = asyncio.create_task(audit())
    await asyncio.gather(*(write(store, i) for i, store in enumerate(stores)))
    done.set()
    await auditor
    assert mismatches == []
    versions = [e.policy.version for _, e in await stream_events(aredis, keyspace)]
    assert versions == list(range(1, 38))
    assert [r.version for r in await stores[0].history(page_size=100)] == list(range(37, 0, -1))


async def test_another_store_follows_changes_through_the_event_stream(
    make_store: StoreFactory,
) -> None:
    # A long staleness bound: only the event stream can bring the change this fast.
    writer, reader = await make_store(), await make_store(staleness_s=30.0)
    written = await writer.switch_mode(RiskMode.AGGRESSIVE, changed_by="test", reason="rally")
    assert await eventually(lambda: reader.get_policy() == written, within_s=5.0)


async def test_a_change_whose_event_was_missed_is_seen_within_the_staleness_bound(
    make_store: StoreFactory, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    store = await make_store(staleness_s=0.2)
    current = store.get_policy()
    newer = dataclasses.replace(
        apply_changes(current, {"trading_state": TradingState.HALTED}),
        version=current.version + 1,
    )
    # Written behind the store's back, with no event: only the version check can find it.
    await aredis.hset(
        keyspace.policy(),
        mapping={
            "version": newer.version,
            "policy": policy_to_proto(newer).SerializeToString(),
            "event_id": "0-1",
        },
    )
    assert await eventually(lambda: store.get_policy().version == 2, within_s=0.2 + 1.0)
    assert store.get_policy().trading_state is TradingState.HALTED


async def test_subscribers_get_the_current_policy_then_each_change(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    seen: list[Policy] = []

    async def watch() -> None:
        async for policy in store.subscribe():
            seen.append(policy)
            if len(seen) == 3:
                return

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.01)
    await store.switch_mode(RiskMode.DEFENSIVE, changed_by="test", reason="a")
    await store.set_trading_state(TradingState.HALTED, changed_by="test", reason="b")
    await asyncio.wait_for(watcher, 5.0)
    assert [p.version for p in seen] == [1, 2, 3]


async def test_a_client_that_decodes_responses_is_refused(
    redis_server_url: str, keyspace: Keyspace, tmp_path: Path
) -> None:
    client = aioredis.Redis.from_url(redis_server_url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses=False"):
            PolicyStore(client, keyspace, state_dir=tmp_path)
    finally:
        await client.aclose()


async def test_writes_and_cache_updates_are_counted_in_the_metrics(
    make_store: StoreFactory,
) -> None:
    registry = MetricsRegistry()
    store = await make_store(metrics=registry)
    await store.switch_mode(RiskMode.DEFENSIVE, expected_version=1, changed_by="t", reason="a")
    await store.switch_mode(RiskMode.DEFENSIVE, changed_by="t", reason="again")
    with pytest.raises(VersionConflict):
        await store.switch_mode(RiskMode.NORMAL, expected_version=1, changed_by="t", reason="b")
    with pytest.raises(PolicyValidationError):
        await store.update({"normal.max_leverage": 0}, changed_by="t", reason="c")
    metrics = policy_metrics(registry)
    assert [metrics.writes.value(o) for o in ("written", "unchanged", "conflict", "invalid")] == [
        1,
        1,
        1,
        1,
    ]
    assert metrics.write_latency.count() == 1
    assert metrics.cache_updates.value("write") == 2  # the defaults, then the change


async def test_a_redis_that_went_back_to_an_older_version_gets_the_newer_one_again(
    make_store: StoreFactory, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    store = await make_store(staleness_s=0.2)
    old = await store.switch_mode(RiskMode.DEFENSIVE, changed_by="test", reason="a")
    newest = await store.set_trading_state(TradingState.HALTED, changed_by="test", reason="b")
    # As if Redis were restored from a backup taken at version 2.
    await aredis.hset(
        keyspace.policy(),
        mapping={"version": old.version, "policy": policy_to_proto(old).SerializeToString()},
    )
    written = await store.update({"normal.max_leverage": 2}, changed_by="test", reason="c")
    assert written.version == newest.version + 1  # built on version 3, never on 2
    assert written.trading_state is TradingState.HALTED
    assert store.get_policy() == written
    assert int(await aredis.hget(keyspace.policy(), "version")) == written.version


async def test_the_follower_outlives_an_error_reply_and_says_degraded(
    make_store: StoreFactory, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    # A long staleness bound: only the event stream can bring the change this fast.
    writer, reader = await make_store(), await make_store(staleness_s=30.0)
    stream = keyspace.stream("policy.updated")
    backup = f"{stream}:backup"
    async with aredis.pipeline(transaction=True) as pipe:
        pipe.rename(stream, backup)
        pipe.set(stream, "not a stream")  # every XREAD now gets a WRONGTYPE error reply
        await pipe.execute()
    assert await eventually(lambda: reader.health() is PolicyHealth.DEGRADED, within_s=5.0)
    assert "follow" in reader.status().last_error
    await aredis.delete(stream)
    await aredis.rename(backup, stream)
    written = await writer.switch_mode(RiskMode.AGGRESSIVE, changed_by="test", reason="rally")
    assert await eventually(lambda: reader.get_policy() == written, within_s=5.0)


async def test_the_version_check_outlives_an_error_reply_and_recovers(
    make_store: StoreFactory, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    store = await make_store(staleness_s=0.1)
    key = keyspace.policy()
    backup = f"{key}:backup"
    async with aredis.pipeline(transaction=True) as pipe:
        pipe.rename(key, backup)
        pipe.set(key, "not a hash")  # every HMGET now gets a WRONGTYPE error reply
        await pipe.execute()
    assert await eventually(lambda: store.health() is PolicyHealth.DEGRADED, within_s=5.0)
    assert "version-check" in store.status().last_error
    await aredis.delete(key)
    await aredis.rename(backup, key)
    assert await eventually(lambda: store.health() is PolicyHealth.HEALTHY, within_s=5.0)
