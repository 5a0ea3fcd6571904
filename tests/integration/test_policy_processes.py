"""PolicyStores in separate processes sharing one Redis: one CAS winner, bounded staleness."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from runtime.adapters.redis.policy_store import PolicyStore
from runtime.core.keys import Keyspace
from runtime.core.policy import RiskMode, TradingState

AGENT = Path(__file__).resolve().parents[1] / "process" / "policy_agent.py"
READ_TIMEOUT_S = 30.0


class Agent:
    """One policy_agent.py process; speaks JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), READ_TIMEOUT_S)
        assert line, f"agent {self.process.pid} exited with {await self.process.wait()}"
        message: dict[str, Any] = json.loads(line)
        return message

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode())

    async def close(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


Spawn = Callable[..., Awaitable[Agent]]


@pytest.fixture
async def spawn(redis_server_url: str, keyspace: Keyspace, tmp_path: Path) -> AsyncIterator[Spawn]:
    """Starts policy agents on the test's namespace; ends them all after the test."""
    agents: list[Agent] = []

    async def start(*role: str) -> Agent:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(AGENT),
            redis_server_url,
            keyspace.namespace,
            str(tmp_path / f"agent-{len(agents)}"),
            *role,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        agent = Agent(process)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        await agent.close()


async def test_of_processes_writing_with_the_same_expected_version_exactly_one_wins(
    spawn: Spawn, aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    first = await spawn("writer", "1", "w0")
    assert await first.read() == {"ready": 1}  # the first one wrote the defaults
    others = [await spawn("writer", "1", f"w{i}") for i in range(1, 4)]
    for agent in others:
        assert await agent.read() == {"ready": 1}
    writers = [first, *others]
    for agent in writers:
        agent.send("go\n")
    results = [await agent.read() for agent in writers]
    winners = [r for r in results if "won" in r]
    conflicts = [r["conflict"] for r in results if "conflict" in r]
    assert len(winners) == 1, results
    assert winners[0]["won"] == 2
    assert conflicts == [{"expected": 1, "current": 2}] * 3
    assert int(await aredis.hget(keyspace.policy(), "version")) == 2
    assert await aredis.xlen(keyspace.stream("policy.updated")) == 2
    [latest, _defaults] = await aredis.zrevrange(keyspace.policy_history(), 0, -1)
    assert f"test:{winners[0]['by']}".encode() in latest


async def test_a_change_reaches_another_process_cache_within_the_staleness_bound(
    spawn: Spawn, aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    store = PolicyStore(aredis, keyspace, state_dir=tmp_path / "writer", staleness_s=1.0)
    await store.start()
    try:
        watcher = await spawn("watcher")
        assert await watcher.read() == {"ready": 1}
        for version, write in enumerate(
            (
                lambda: store.switch_mode(RiskMode.DEFENSIVE, changed_by="test", reason="a"),
                lambda: store.set_trading_state(
                    TradingState.REDUCING, changed_by="test", reason="b"
                ),
                lambda: store.update(
                    {"defensive.max_open_positions": 1}, changed_by="test", reason="c"
                ),
            ),
            start=2,
        ):
            written_ns = time.monotonic_ns()
            assert (await write()).version == version
            seen = await watcher.read()
            assert seen["version"] == version
            # The monotonic clock is shared by every process on the machine.
            assert (seen["seen_ns"] - written_ns) / 1e9 <= 1.0, "beyond the staleness bound"
    finally:
        await store.stop()
