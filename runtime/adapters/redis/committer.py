"""``Committer`` on Redis: one MULTI/EXEC per batch.

Inside the transaction, in this order: the outputs (XADD), the dead letters (XADD), the trace
index (RPUSH + EXPIRE per trace), the acknowledgements (XACK), the processed marks (SADD +
EXPIRE per bucket) and the actor's state (SET). Redis runs a MULTI/EXEC block whole, with
nothing interleaved, and an AOF records it as one unit: after a crash either all of it is
there or none, so "output published", "input acknowledged", "input processed" and "state"
never disagree. The block is packed by hiredis and sent in one write: one round trip per
batch, no script.

On a single Redis every key lives on one node; Redis Cluster splits the commit by slot
(issue: distributed engines), which is why the acknowledgement comes after what it confirms.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from runtime.adapters.redis.errors import CommitFailed, is_transient
from runtime.adapters.redis.resp import RespConnection, pack
from runtime.adapters.redis.streams import StreamNames
from runtime.adapters.redis.subscription import PROCESSED_BUCKET_CHARS
from runtime.core.dead_letters import DLQ_MAXLEN
from runtime.core.keys import Keyspace
from runtime.core.trace_index import DEFAULT_TRACE_TTL_S
from runtime.core.transport import Commit

_MULTI = pack(b"MULTI")
_EXEC = pack(b"EXEC")


class RedisCommitter:
    """Commits one domain partition's batches; keeps its state key and heartbeat."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keyspace: Keyspace,
        names: StreamNames,
        *,
        domain: str,
        group: str,
        state_key: str,
        processed_ttl_s: int,
        trace_ttl_s: int = DEFAULT_TRACE_TTL_S,
    ) -> None:
        self.redis = redis
        self.keyspace = keyspace
        self.names = names
        self.domain = domain
        self.state_key = state_key
        self._group_b = group.encode()
        self._conn = RespConnection.of(redis)
        self._dlq = keyspace.dlq(domain).encode()
        self._dlq_maxlen = str(DLQ_MAXLEN).encode()
        self._processed_prefix = keyspace.processed(domain) + ":"
        self._processed_ttl = str(processed_ttl_s).encode()
        self._trace_ttl = str(trace_ttl_s).encode()
        self._heartbeat_key = keyspace.heartbeat(domain)

    async def load_state(self) -> bytes | None:
        data = await self.redis.get(self.state_key)
        return data if isinstance(data, bytes) else None

    async def commit(self, commit: Commit) -> None:
        parts, count = self._pack(commit)
        replies = await self._conn.send_packed(b"".join(parts), count)
        result = replies[-1]
        if isinstance(result, hiredis.ReplyError):  # EXECABORT, or a refusal of MULTI itself
            raise ResponseError(str(result))
        for reply in result or ():
            if isinstance(reply, hiredis.ReplyError):
                raise CommitFailed(f"Redis refused part of a commit of {self.domain}: {reply}")

    def _pack(self, commit: Commit) -> tuple[list[bytes], int]:
        parts = [_MULTI]
        xadd = self.names.xadd
        traces: dict[str, list[bytes]] = {}
        for envelope in commit.indexed:
            traces.setdefault(envelope.trace_id, []).append(envelope.SerializeToString())
        for envelope in commit.outputs:
            data = envelope.SerializeToString()
            parts.append(xadd(envelope.event_type, data))
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
        for trace_id, items in traces.items():
            key = trace_key(trace_id)
            parts.append(pack(b"RPUSH", key, *items))
            parts.append(pack(b"EXPIRE", key, self._trace_ttl))
        group = self._group_b
        for stream, ids in commit.acks.items():
            parts.append(pack(b"XACK", stream, group, *ids))
        buckets: dict[str, list[str]] = {}
        prefix = self._processed_prefix
        for event_id in commit.processed:
            key = prefix + event_id[:PROCESSED_BUCKET_CHARS]
            marks = buckets.get(key)
            if marks is None:
                buckets[key] = [event_id]
            else:
                marks.append(event_id)
        for key, marks in buckets.items():
            parts.append(pack(b"SADD", key, *marks))
            parts.append(pack(b"EXPIRE", key, self._processed_ttl))
        if commit.state is not None:
            parts.append(pack(b"SET", self.state_key, commit.state))
        parts.append(_EXEC)
        return parts, len(parts)

    async def heartbeat(self, consumer: str, at_ms: int) -> None:
        await self.redis.hset(self._heartbeat_key, consumer, str(at_ms))

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    async def close(self) -> None:
        await self._conn.close()
