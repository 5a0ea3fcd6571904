"""Redis Streams as the event log: where each event type lives and how an append is spelt.

One stream per topic: an event type (``<namespace>:stream:<type>``) or one partition of it
(``<namespace>:stream:<type>:<k>``, ``runtime.core.partitioning``), each entry one field,
``envelope``, holding the serialized Envelope. Appends are ``XADD <stream> * envelope
<bytes>``, pipelined: a batch costs one round trip and no script. An append never trims:
``runtime.adapters.redis.retention`` does, below what every group has read, and makes
appends wait when a stream's unread backlog reaches its length limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from quantum.events.v1.envelope_pb2 import Envelope
from redis.exceptions import ResponseError

from runtime.adapters.redis.errors import is_transient
from runtime.adapters.redis.resp import RespConnection, pack
from runtime.adapters.redis.retention import StreamRetention
from runtime.core.keys import Keyspace
from runtime.core.partitioning import UNPARTITIONED, Partitioning, event_type_of

ENVELOPE_FIELD = b"envelope"
DEFAULT_MAXLEN = 10_000


class StreamNames:
    """Stream name and length ceiling per event type, computed once per type."""

    def __init__(
        self,
        keyspace: Keyspace,
        *,
        maxlen: int = DEFAULT_MAXLEN,
        maxlen_per_stream: Mapping[str, int] | None = None,
        partitioning: Partitioning | None = None,
    ) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be at least 1; got {maxlen}")
        self.keyspace = keyspace
        self.partitioning = partitioning or UNPARTITIONED
        self.maxlen = maxlen
        self.per_stream = dict(maxlen_per_stream or {})
        self._known: dict[str, tuple[str, int]] = {}
        self._xadd_head: dict[str, bytes] = {}

    def of(self, topic: str) -> tuple[str, int]:
        """(stream key, length limit) of a topic: an event type, or one partition of it
        (whose limit is its type's unless the stream is named on its own)."""
        known = self._known.get(topic)
        if known is None:
            stream = self.keyspace.stream(topic)
            maxlen = self.per_stream.get(
                stream,
                self.per_stream.get(topic, self.per_stream.get(event_type_of(topic), self.maxlen)),
            )
            known = self._known[topic] = (stream, maxlen)
            # The packed command without its last argument, its array header counting it.
            head = pack(b"XADD", stream, b"*", ENVELOPE_FIELD)
            assert head.startswith(b"*4\r\n")
            self._xadd_head[topic] = b"*5\r\n" + head[4:]
        return known

    def appends(self, topics: Iterable[str]) -> list[tuple[str, int, int]]:
        """(stream, length limit, entries) of each distinct topic, for the retention."""
        counts: dict[str, int] = {}
        for topic in topics:
            counts[topic] = counts.get(topic, 0) + 1
        return [(*self.of(topic), n) for topic, n in counts.items()]

    def topic(self, envelope: Envelope) -> str:
        """The topic an output envelope goes to (its type's partition for its key)."""
        return self.partitioning.topic(envelope.event_type, envelope.partition_key)

    def xadd(self, topic: str, data: bytes) -> bytes:
        """The packed XADD of one serialized envelope: a cached head (the command with its
        constant arguments) and the envelope's bulk string, no packing call per event."""
        head = self._xadd_head.get(topic)
        if head is None:
            self.of(topic)
            head = self._xadd_head[topic]
        return head + b"$%d\r\n%b\r\n" % (len(data), data)


class RedisEventLog:
    """``EventLog`` on Redis Streams: a pipelined XADD per envelope on a lean connection,
    after the retention made room on the streams it appends to."""

    def __init__(
        self, redis: aioredis.Redis, names: StreamNames, retention: StreamRetention
    ) -> None:
        self.names = names
        self.retention = retention
        self._conn = RespConnection.of(redis)

    async def append(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        """Append (event type, serialized envelope) records, pipelined, in one write."""
        names = self.names
        await self.retention.make_room(names.appends(topic for topic, _ in items))
        xadd = names.xadd
        packed = b"".join([xadd(topic, data) for topic, data in items])
        return self.ids_of(await self._conn.send_packed(packed, len(items)))

    @staticmethod
    def ids_of(replies: list[Any]) -> list[str]:
        """The entry ids of pipelined XADD replies; an error reply raised."""
        ids: list[str] = []
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise ResponseError(str(reply))
            ids.append(reply.decode())
        return ids

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    async def close(self) -> None:
        """Trim what this process appended to its streams' history (``settle``), then close."""
        try:
            await self.retention.settle()
        finally:
            await self._conn.close()
