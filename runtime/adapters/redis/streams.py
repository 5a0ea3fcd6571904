"""Redis Streams as the event log: where each event type lives and how an append is spelt.

One stream per event type (``<namespace>:stream:<type>``), each entry one field,
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
from redis.exceptions import ResponseError

from runtime.adapters.redis.errors import is_transient
from runtime.adapters.redis.resp import RespConnection, pack
from runtime.adapters.redis.retention import StreamRetention
from runtime.core.keys import Keyspace

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
    ) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be at least 1; got {maxlen}")
        self.keyspace = keyspace
        self.maxlen = maxlen
        self.per_stream = dict(maxlen_per_stream or {})
        self._known: dict[str, tuple[str, int]] = {}
        self._xadd_head: dict[str, bytes] = {}

    def of(self, event_type: str) -> tuple[str, int]:
        """(stream key, length limit) of an event type."""
        known = self._known.get(event_type)
        if known is None:
            stream = self.keyspace.stream(event_type)
            maxlen = self.per_stream.get(event_type, self.per_stream.get(stream, self.maxlen))
            known = self._known[event_type] = (stream, maxlen)
            # The packed command without its last argument, its array header counting it.
            head = pack(b"XADD", stream, b"*", ENVELOPE_FIELD)
            assert head.startswith(b"*4\r\n")
            self._xadd_head[event_type] = b"*5\r\n" + head[4:]
        return known

    def appends(self, event_types: Iterable[str]) -> list[tuple[str, int, int]]:
        """(stream, length limit, entries) of each distinct event type, for the retention."""
        counts: dict[str, int] = {}
        for event_type in event_types:
            counts[event_type] = counts.get(event_type, 0) + 1
        return [(*self.of(event_type), n) for event_type, n in counts.items()]

    def xadd(self, event_type: str, data: bytes) -> bytes:
        """The packed XADD of one serialized envelope: a cached head (the command with its
        constant arguments) and the envelope's bulk string, no packing call per event."""
        head = self._xadd_head.get(event_type)
        if head is None:
            self.of(event_type)
            head = self._xadd_head[event_type]
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
        await self.retention.make_room(names.appends(event_type for event_type, _ in items))
        xadd = names.xadd
        packed = b"".join([xadd(event_type, data) for event_type, data in items])
        return self._ids(await self._conn.send_packed(packed, len(items)))

    @staticmethod
    def _ids(replies: list[Any]) -> list[str]:
        ids: list[str] = []
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise ResponseError(str(reply))
            ids.append(reply.decode())
        return ids

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    async def close(self) -> None:
        await self._conn.close()
