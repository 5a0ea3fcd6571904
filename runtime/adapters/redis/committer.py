"""``Committer`` on Redis: one MULTI/EXEC per batch, fenced by the partition's lease.

Inside the transaction, in this order: the outputs (XADD), the dead letters (XADD), the trace
index (RPUSH + EXPIRE per trace), the acknowledgements (XACK), the processed marks (SADD +
EXPIRE per bucket) and the actor's state (SET). Redis runs a MULTI/EXEC block whole, with
nothing interleaved, and an AOF records it as one unit: after a crash either all of it is
there or none, so "output published", "input acknowledged", "input processed" and "state"
never disagree. The block is packed by hiredis and sent in one write: one round trip per
batch, no script.

Fencing: the partition's lease (``<ns>:lease:<group>``, "<token> <holder>", with a TTL) is
WATCHed and read before the MULTI: when another owner holds it, the commit is refused
(``LeaseLost``); when it changes between the read and the EXEC (taken over, or expired),
Redis aborts the EXEC and nothing is written. A paused or partitioned-away owner can
therefore never overwrite its successor's work. Lease scripts run per acquire and renewal
(every third of the TTL), never per event.

On a single Redis every key lives on one node; Redis Cluster splits the commit by slot
(issue: distributed engines), which is why the acknowledgement comes after what it confirms.
"""

from __future__ import annotations

import contextlib
import time
from functools import partial
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from runtime.adapters.redis import marks
from runtime.adapters.redis.errors import CommitFailed, is_transient
from runtime.adapters.redis.resp import RespConnection, pack
from runtime.adapters.redis.retention import StreamRetention
from runtime.adapters.redis.streams import StreamNames
from runtime.core.dead_letters import DLQ_MAXLEN
from runtime.core.keys import Keyspace
from runtime.core.logs import get_logger
from runtime.core.trace_index import DEFAULT_MAX_TRACES, DEFAULT_TRACE_TTL_S
from runtime.core.transport import Backpressure, Commit, Lease, LeaseLost

_log = get_logger("runtime.adapters.redis")
TRACE_PRUNE_INTERVAL_S = 5.0
_MULTI = pack(b"MULTI")
_EXEC = pack(b"EXEC")
_UNWATCH = pack(b"UNWATCH")

# KEYS: lease, token counter. ARGV: holder, ttl ms. A live lease of another holder: returns
# minus the milliseconds it has left. Otherwise (free, expired or already ours): the token.
ACQUIRE_LEASE = """
local current = redis.call('GET', KEYS[1])
if current then
  local token, holder = string.match(current, '^(%d+) (.*)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
  return -math.max(redis.call('PTTL', KEYS[1]), 1)
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ' ' .. ARGV[1], 'PX', ARGV[2])
return token
"""

# KEYS: lease. ARGV: "<token> <holder>", ttl ms (0: release). 1 when the lease was ours.
RENEW_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if tonumber(ARGV[2]) == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""


class RedisCommitter:
    """Commits one domain partition's batches; keeps its state key and heartbeat."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keyspace: Keyspace,
        names: StreamNames,
        retention: StreamRetention,
        *,
        domain: str,
        group: str,
        state_key: str,
        lease_key: str,
        processed_ttl_s: int,
        trace_ttl_s: int = DEFAULT_TRACE_TTL_S,
        max_traces: int = DEFAULT_MAX_TRACES,
    ) -> None:
        self.redis = redis
        self.keyspace = keyspace
        self.names = names
        self.retention = retention
        self.max_traces = max_traces
        self._trace_registry = keyspace.trace_registry()
        self._trace_ttl_s = trace_ttl_s
        self._pruned_at = 0.0
        self._indexed_since_prune = 0
        self.domain = domain
        self.state_key = state_key
        self.lease_key = lease_key
        # Bumped by a state repair (control_plane.state_repair): the state this committer's
        # runner holds was replaced from outside, so its next commit must not overwrite it.
        self.epoch_key = keyspace.state_epoch(domain)
        self._epoch: bytes | None = None
        self._acquire = redis.register_script(ACQUIRE_LEASE)
        self._renew = redis.register_script(RENEW_LEASE)
        self._watch = (
            pack(b"WATCH", lease_key, self.epoch_key)
            + pack(b"GET", lease_key)
            + pack(b"GET", self.epoch_key)
        )
        self._group_b = group.encode()
        self._conn = RespConnection.of(redis)
        self._dlq = keyspace.dlq(domain).encode()
        self._dlq_maxlen = str(DLQ_MAXLEN).encode()
        self._processed_ttl = str(processed_ttl_s).encode()
        self._trace_ttl = str(trace_ttl_s).encode()
        self._heartbeat_key = keyspace.heartbeat(domain)

    async def load_state(self) -> bytes | None:
        """The stored state, and (kept) the state epoch it belongs to."""
        data, epoch = await self._conn.pipeline([("GET", self.state_key), ("GET", self.epoch_key)])
        self._epoch = epoch
        return data if isinstance(data, bytes) else None

    async def commit(self, commit: Commit) -> None:
        if commit.outputs:
            await self._room_for(commit)
        parts, count = self._pack(commit)
        packed = b"".join(parts)
        lease = commit.lease
        if lease is None:
            await self._exec(packed, count)
        else:
            await self._fenced(packed, count, lease)
        if commit.outputs and (
            self._indexed_since_prune >= max(1, self.max_traces // 10)
            or time.monotonic() - self._pruned_at >= TRACE_PRUNE_INTERVAL_S
        ):
            await self._prune_traces()

    async def _fenced(self, packed: bytes, count: int, lease: Lease) -> None:
        # The WATCH and the MULTI go on the same connection, in this order, and nothing else
        # uses it: the commit connection is this committer's alone. A renewal of our own
        # lease (PEXPIRE) between the two also aborts the EXEC: then the lease is read again.
        while True:
            _, current, epoch = await self._conn.send_packed(self._watch, 3)
            if current != lease_value(lease):
                await self._conn.send_packed(_UNWATCH, 1)
                raise LeaseLost(
                    f"{self.domain}: the lease {self.lease_key} is no longer held by "
                    f"{lease.holder} (token {lease.token}); another owner took over"
                )
            if epoch != self._epoch:
                await self._conn.send_packed(_UNWATCH, 1)
                raise LeaseLost(
                    f"{self.domain}: its stored state was replaced (state repair, epoch "
                    f"{epoch!r}); the runner reloads it and handles its pending entries again"
                )
            if await self._exec(packed, count):
                return

    async def _prune_traces(self) -> None:
        self._pruned_at = time.monotonic()
        self._indexed_since_prune = 0
        await prune_trace_index(self.redis, self.keyspace, self.max_traces, self._trace_ttl_s)

    async def _room_for(self, commit: Commit) -> None:
        """Wait until every output stream has room: a runner never drops its outputs. It
        waits as long as it takes (its own inputs then back up to the feed), saying so."""
        appends = self.names.appends(self.names.topic(e) for e in commit.outputs)
        while True:
            try:
                await self.retention.make_room(appends)
                return
            except Backpressure as exc:
                _log.warning("outputs_waiting_for_room", domain=self.domain, error=str(exc))

    async def _exec(self, packed: bytes, count: int) -> bool:
        """Send a packed MULTI..EXEC; False when a WATCHed key aborted it."""
        replies = await self._conn.send_packed(packed, count)
        result = replies[-1]
        if isinstance(result, hiredis.ReplyError):  # EXECABORT, or a refusal of MULTI itself
            raise ResponseError(str(result))
        if result is None:
            return False
        for reply in result:
            if isinstance(reply, hiredis.ReplyError):
                raise CommitFailed(f"Redis refused part of a commit of {self.domain}: {reply}")
        return True

    async def acquire(self, holder: str, ttl_ms: int) -> Lease | None:
        token = int(
            await self._acquire(
                keys=[self.lease_key, self.keyspace.fencing_tokens()], args=[holder, ttl_ms]
            )
        )
        return Lease(holder, token) if token > 0 else None

    async def renew(self, lease: Lease, ttl_ms: int) -> bool:
        return bool(await self._renew(keys=[self.lease_key], args=[lease_value(lease), ttl_ms]))

    async def release(self, lease: Lease) -> None:
        await self._renew(keys=[self.lease_key], args=[lease_value(lease), 0])

    def _pack(self, commit: Commit) -> tuple[list[bytes], int]:
        parts = [_MULTI]
        xadd = self.names.xadd
        topic = self.names.topic
        traces: dict[str, list[bytes]] = {}
        for envelope in commit.indexed:
            traces.setdefault(envelope.trace_id, []).append(envelope.SerializeToString())
        for envelope in commit.outputs:
            data = envelope.SerializeToString()
            parts.append(xadd(topic(envelope), data))
            indexed = traces.get(envelope.trace_id)
            if indexed is None:
                traces[envelope.trace_id] = [data]
            else:
                indexed.append(data)
        for letter in commit.dead:
            command: list[Any] = [b"XADD", self._dlq, b"MAXLEN", b"~", self._dlq_maxlen, b"*"]
            for name, value in letter.fields().items():
                command += (name, value)
            parts.append(pack(*command))
        trace_key = self.keyspace.trace
        if traces:
            now = str(time.time_ns() // 1_000_000).encode()
            registry: list[bytes | str] = [b"ZADD", self._trace_registry, b"NX"]
            self._indexed_since_prune += len(traces)
            for trace_id, items in traces.items():
                key = trace_key(trace_id)
                parts.append(pack(b"RPUSH", key, *items))
                parts.append(pack(b"EXPIRE", key, self._trace_ttl))
                registry += (now, trace_id)
            parts.append(pack(*registry))
        group = self._group_b
        for stream, ids in commit.acks.items():
            parts.append(pack(b"XACK", stream, group, *ids))
        bucket = partial(self.keyspace.processed_bucket, self.domain)
        parts += marks.pack_marks(bucket, commit.processed, self._processed_ttl)
        if commit.state is not None:
            parts.append(pack(b"SET", self.state_key, commit.state))
        parts.append(_EXEC)
        return parts, len(parts)

    async def heartbeat(self, consumer: str, at_ms: int) -> None:
        await self.redis.hset(self._heartbeat_key, consumer, str(at_ms))

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    async def close(self) -> None:
        """Prune the trace index a last time (it stays within its bound after a stop)."""
        if self._indexed_since_prune:
            with contextlib.suppress(Exception):  # Redis away at stop: the next owner prunes
                await self._prune_traces()
        await self._conn.close()


async def prune_trace_index(
    redis: aioredis.Redis, keyspace: Keyspace, max_traces: int, trace_ttl_s: int
) -> None:
    """Keep the trace index within its bounds: at most ``max_traces`` traces (the oldest go
    first) and none older than its time to live (those keys expired by themselves)."""
    registry = keyspace.trace_registry()
    cutoff = time.time() * 1000 - trace_ttl_s * 1000
    await redis.zremrangebyscore(registry, "-inf", cutoff)
    excess = await redis.zcard(registry) - max_traces
    while excess > 0:
        oldest: list[tuple[bytes, float]] = await redis.zpopmin(  # type: ignore[assignment]
            registry, min(excess, 1_000)
        )
        if not oldest:
            break
        await redis.delete(*(keyspace.trace(t.decode()) for t, _ in oldest))
        excess -= len(oldest)


def lease_value(lease: Lease) -> bytes:
    return f"{lease.token} {lease.holder}".encode()
