"""Helpers of the control-plane tests: events on streams, waiting for a condition."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as aioredis
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.adapters.redis.committer import RedisCommitter
from runtime.adapters.redis.retention import StreamRetention
from runtime.adapters.redis.streams import StreamNames
from runtime.core import tracing
from runtime.core.envelope import seal
from runtime.core.keys import Keyspace
from runtime.core.transport import Commit
from tests.process.actors import tick


async def wait_until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def tick_envelopes(count: int, symbol: str = "BTC-USD") -> list[Envelope]:
    """``count`` market.tick envelopes of one new trace each, sequences 1..count."""
    return [
        seal(tick(symbol, n), producer="market_data", partition_key=symbol)
        for n in range(1, count + 1)
    ]


def causal_chain(length: int) -> tuple[str, list[Envelope]]:
    """A trace of ``length`` events, each caused by the one before; returns (trace id, events)."""
    root = tracing.new_trace()
    events: list[Envelope] = []
    for n in range(1, length + 1):
        parent = events[-1] if events else None
        ctx = (
            tracing.TraceContext(trace_id=root.trace_id, span_id=parent.span_id)
            if parent is not None
            else root
        )
        events.append(
            seal(
                tick("ETH-USD", n),
                producer="market_data",
                partition_key="ETH-USD",
                causation_id=parent.event_id if parent is not None else "",
                trace=ctx,
            )
        )
    return root.trace_id, events


async def index_trace(redis: aioredis.Redis, keyspace: Keyspace, envelopes: list[Envelope]) -> None:
    """Index envelopes as a consumer's batch commit does (it indexes the events of chains)."""
    committer = RedisCommitter(
        redis,
        keyspace,
        StreamNames(keyspace),
        StreamRetention(redis),
        domain="test_indexer",
        group="test_indexer",
        state_key=keyspace.state("test_indexer"),
        lease_key=keyspace.lease("test_indexer"),
        processed_ttl_s=60,
    )
    try:
        await committer.commit(Commit(indexed=list(envelopes)))
    finally:
        await committer.close()
