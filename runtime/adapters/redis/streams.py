"""Redis Streams as the event log: where each event type lives and how an append is spelt.

One stream per event type (``<namespace>:stream:<type>``), each entry one field,
``envelope``, holding the serialized Envelope. Appends are ``XADD <stream> MAXLEN ~ <n> *
envelope <bytes>``, pipelined: a batch costs one round trip and no script.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from runtime.adapters.redis.errors import is_transient
from runtime.adapters.redis.resp import RespConnection, pack
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
        self._known: dict[str, tuple[bytes, bytes]] = {}

    def of(self, event_type: str) -> tuple[bytes, bytes]:
        """(stream key, MAXLEN) of an event type, as bytes ready for a command."""
        known = self._known.get(event_type)
        if known is None:
            stream = self.keyspace.stream(event_type)
            maxlen = self.per_stream.get(event_type, self.per_stream.get(stream, self.maxlen))
            known = self._known[event_type] = (stream.encode(), str(maxlen).encode())
        return known

    def xadd(self, event_type: str, data: bytes) -> bytes:
        """The packed XADD of one serialized envelope."""
        stream, maxlen = self.of(event_type)
        return pack(b"XADD", stream, b"MAXLEN", b"~", maxlen, b"*", ENVELOPE_FIELD, data)


class RedisEventLog:
    """``EventLog`` on Redis Streams: a pipelined XADD per envelope on a lean connection."""

    def __init__(self, redis: aioredis.Redis, names: StreamNames) -> None:
        self.names = names
        self._conn = RespConnection.of(redis)

    async def append(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        """Append (event type, serialized envelope) records, pipelined, in one write."""
        xadd = self.names.xadd
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
