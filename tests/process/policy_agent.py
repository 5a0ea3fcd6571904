"""A PolicyStore in its own process, driven by the policy integration tests.

    python policy_agent.py <redis_url> <namespace> <state_dir> writer <expected_version> <name>
    python policy_agent.py <redis_url> <namespace> <state_dir> watcher

Prints one JSON object per line on standard output. A writer prints {"ready": version},
waits for a line on standard input, makes one compare-and-set write and prints
{"won": version} or {"conflict": {"expected": n, "current": m}}. A watcher prints
{"ready": version}, then {"version": n, "seen_ns": monotonic ns} for every change its cache
takes, until standard input closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from decimal import Decimal
from pathlib import Path

import redis.asyncio as aioredis

from runtime.adapters.redis.policy_store import PolicyStore
from runtime.core.keys import Keyspace
from runtime.core.logs import configure_logging
from runtime.core.policy import VersionConflict


def say(message: object) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def writer(store: PolicyStore, expected: int, name: str) -> None:
    say({"ready": store.get_policy().version})
    await asyncio.to_thread(sys.stdin.readline)
    try:
        policy = await store.update(
            {"normal.max_position_notional": Decimal(20000 + len(name))},
            expected_version=expected,
            changed_by=f"test:{name}",
            reason="race",
        )
    except VersionConflict as conflict:
        say({"conflict": {"expected": conflict.expected, "current": conflict.current}})
    else:
        say({"won": policy.version, "by": name})


async def watcher(store: PolicyStore) -> None:
    async def follow() -> None:
        async for policy in store.subscribe(include_current=False):
            say({"version": policy.version, "seen_ns": time.monotonic_ns()})

    task = asyncio.create_task(follow())
    say({"ready": store.get_policy().version})
    await asyncio.to_thread(sys.stdin.read)  # until the test closes our standard input
    task.cancel()


async def main(argv: list[str]) -> None:
    url, namespace, state_dir, role, *rest = argv
    configure_logging("WARNING")  # logs to standard error; standard output is for the test
    client = aioredis.Redis.from_url(url)
    store = PolicyStore(client, Keyspace(namespace), state_dir=Path(state_dir))
    await store.start()
    try:
        if role == "writer":
            await writer(store, int(rest[0]), rest[1])
        else:
            await watcher(store)
    finally:
        await store.stop()
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
