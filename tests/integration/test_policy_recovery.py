"""Snapshots and outages: restore into an emptied Redis, refuse a corrupted snapshot, survive a
Redis that goes away and comes back (with or without its data)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from runtime.adapters.redis.policy_store import PolicyStore
from runtime.core.keys import Keyspace
from runtime.core.policy import (
    PolicyHealth,
    PolicyUnavailable,
    RiskMode,
    SnapshotCorrupted,
    TradingState,
)
from runtime.core.redis_server import RedisServer


async def eventually(check: Callable[[], bool], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.02)
    return check()


async def empty_namespace(client: aioredis.Redis, keyspace: Keyspace) -> None:
    keys = [key async for key in client.scan_iter(match=keyspace.pattern(), count=1000)]
    if keys:
        await client.delete(*keys)


def corrupt_copies(path: Path) -> list[Path]:
    return list(path.parent.glob(f"{path.name}.corrupt-*"))


async def tightened_store(client: aioredis.Redis, keyspace: Keyspace, state: Path) -> PolicyStore:
    """A store at version 3: DEFENSIVE and HALTED, as after an incident."""
    store = PolicyStore(client, keyspace, state_dir=state, staleness_s=0.2)
    await store.start()
    await store.switch_mode(RiskMode.DEFENSIVE, changed_by="test", reason="incident")
    await store.set_trading_state(TradingState.HALTED, changed_by="test", reason="incident")
    return store


async def test_a_restart_with_an_emptied_redis_restores_from_the_snapshot(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    before = await tightened_store(aredis, keyspace, tmp_path)
    await before.stop()
    expected = before.get_policy()
    await empty_namespace(aredis, keyspace)

    after = PolicyStore(aredis, keyspace, state_dir=tmp_path)
    with capture_logs() as logs:
        await after.start()
    try:
        assert after.get_policy() == expected  # version 3, DEFENSIVE, HALTED: not the defaults
        assert any(line["event"] == "policy_restored_from_snapshot" for line in logs)
        assert int(await aredis.hget(keyspace.policy(), "version")) == 3
        [(_, fields)] = await aredis.xrange(keyspace.stream("policy.updated"))
        assert b"restored from the snapshot" in fields[b"envelope"]
        [record] = await after.history()
        assert (record.version, record.changed_by) == (3, "policy_store")
    finally:
        await after.stop()


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda text: text[: len(text) // 2], "not valid JSON"),
        (lambda text: text.replace('"max_leverage": "1"', '"max_leverage": "9"'), "checksum"),
    ],
    ids=["truncated", "edited"],
)
async def test_a_corrupted_snapshot_is_reported_and_never_loaded_over_good_redis_state(
    aredis: aioredis.Redis,
    keyspace: Keyspace,
    tmp_path: Path,
    damage: Callable[[str], str],
    problem: str,
) -> None:
    before = await tightened_store(aredis, keyspace, tmp_path)
    await before.stop()
    path = tmp_path / f"policy-{keyspace.namespace}.json"
    text = path.read_text()
    path.write_text(damage(text))
    assert path.read_text() != text

    after = PolicyStore(aredis, keyspace, state_dir=tmp_path)
    with capture_logs() as logs:
        await after.start()
    try:
        assert after.get_policy() == before.get_policy()  # Redis's version 3 stands
        assert int(await aredis.hget(keyspace.policy(), "version")) == 3
        [report] = [line for line in logs if line["event"] == "policy_snapshot_corrupted"]
        assert report["path"] == str(path)
        assert problem in report["problem"]
        assert problem in after.status().snapshot_problem
        assert corrupt_copies(path)  # kept aside for inspection
        # A fresh snapshot of the good state replaces it.
        assert await eventually(path.exists, within_s=5.0)
        assert json.loads(path.read_text())["version"] == 3
    finally:
        await after.stop()


async def test_an_empty_redis_and_a_corrupted_snapshot_refuse_to_start(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    path = tmp_path / f"policy-{keyspace.namespace}.json"
    path.write_text("{not json")
    store = PolicyStore(aredis, keyspace, state_dir=tmp_path)
    with pytest.raises(SnapshotCorrupted, match=str(path)):
        await store.start()
    # Nothing was written: the defaults could loosen what the snapshot had tightened.
    assert await aredis.exists(keyspace.policy()) == 0
    assert path.read_text() == "{not json"


@pytest.fixture
async def private_client(private_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(private_redis.url, socket_timeout=2, socket_connect_timeout=2)
    yield client
    await client.aclose()


async def test_with_redis_down_reads_serve_writes_fail_and_the_store_resyncs_on_return(
    private_redis: RedisServer, private_client: aioredis.Redis, tmp_path: Path
) -> None:
    keyspace = Keyspace("outage")
    store = await tightened_store(private_client, keyspace, tmp_path / "a")
    other = PolicyStore(private_client, keyspace, state_dir=tmp_path / "b", staleness_s=0.2)
    await other.start()
    try:
        private_redis.kill()
        assert store.get_policy().version == 3  # served from memory
        assert await eventually(lambda: store.health() is PolicyHealth.DEGRADED, within_s=5.0)
        assert "Redis unreachable" in store.status().last_error
        with pytest.raises(PolicyUnavailable, match="Redis is unreachable"):
            await store.switch_mode(RiskMode.NORMAL, changed_by="test", reason="too early")
        with pytest.raises(PolicyUnavailable):
            await store.history()
        assert store.get_policy().mode is RiskMode.DEFENSIVE

        private_redis.restart()  # append-only file: the data is back
        assert await eventually(lambda: store.health() is PolicyHealth.HEALTHY, within_s=10.0)
        # A newer version written after the return reaches the other store.
        newer = await store.switch_mode(RiskMode.NORMAL, changed_by="test", reason="recovered")
        assert newer.version == 4
        assert await eventually(lambda: other.get_policy().version == 4, within_s=5.0)
        assert other.health() is PolicyHealth.HEALTHY
    finally:
        await other.stop()
        await store.stop()


async def test_a_redis_that_lost_its_data_gets_the_last_known_policy_back(
    private_redis: RedisServer, private_client: aioredis.Redis, tmp_path: Path
) -> None:
    keyspace = Keyspace("amnesia")
    store = await tightened_store(private_client, keyspace, tmp_path)
    try:
        private_redis.kill()
        for child in private_redis.workdir.iterdir():  # the data is gone for good
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        private_redis.restart()
        fresh = aioredis.Redis.from_url(private_redis.url)
        try:
            deadline = time.monotonic() + 10.0
            while await fresh.hget(keyspace.policy(), "version") != b"3":
                assert time.monotonic() < deadline, "the store did not restore its policy"
                await asyncio.sleep(0.05)
        finally:
            await fresh.aclose()
        assert await eventually(lambda: store.health() is PolicyHealth.HEALTHY, within_s=5.0)
        assert store.get_policy().trading_state is TradingState.HALTED  # never the defaults
        written = await store.set_trading_state(
            TradingState.REDUCING, expected_version=3, changed_by="test", reason="thaw"
        )
        assert written.version == 4
    finally:
        await store.stop()


async def test_a_start_without_redis_serves_the_snapshot_until_redis_returns(
    private_redis: RedisServer, private_client: aioredis.Redis, tmp_path: Path
) -> None:
    keyspace = Keyspace("cold-start")
    before = await tightened_store(private_client, keyspace, tmp_path)
    await before.stop()
    private_redis.kill()

    with pytest.raises(PolicyUnavailable, match="no usable snapshot"):
        await PolicyStore(private_client, keyspace, state_dir=tmp_path / "empty").start()
    store = PolicyStore(private_client, keyspace, state_dir=tmp_path, staleness_s=0.2)
    await store.start()
    try:
        assert store.health() is PolicyHealth.DEGRADED
        assert store.get_policy() == before.get_policy()
        private_redis.restart()
        assert await eventually(lambda: store.health() is PolicyHealth.HEALTHY, within_s=10.0)
        written = await store.switch_mode(
            RiskMode.NORMAL, expected_version=3, changed_by="test", reason="back"
        )
        assert written.version == 4
    finally:
        await store.stop()


async def test_the_snapshot_is_rewritten_after_each_change_and_periodically(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    store = PolicyStore(aredis, keyspace, state_dir=tmp_path, snapshot_interval_s=0.3)
    await store.start()
    path = tmp_path / f"policy-{keyspace.namespace}.json"
    try:
        await store.switch_mode(RiskMode.AGGRESSIVE, changed_by="test", reason="rally")
        assert await eventually(
            lambda: path.exists() and json.loads(path.read_text())["version"] == 2, within_s=5.0
        )
        path.unlink()  # no change follows: only the periodic write can bring it back
        assert await eventually(path.exists, within_s=5.0)
        assert json.loads(path.read_text())["policy"]["mode"] == "RISK_MODE_AGGRESSIVE"
    finally:
        await store.stop()
