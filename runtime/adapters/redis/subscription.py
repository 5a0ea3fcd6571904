"""``Subscription`` on Redis Streams consumer groups.

The hot reads (XREADGROUP, the processed-mark lookup) go over a lean connection of their
own, so a blocking read never delays a commit; the rarer ones (claims, pending counts, group
management) through redis-py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from runtime.adapters.redis import marks
from runtime.adapters.redis.errors import is_missing_group, is_transient
from runtime.adapters.redis.resp import RespConnection
from runtime.adapters.redis.streams import ENVELOPE_FIELD
from runtime.core.delivery import entry_order, merge_by_time
from runtime.core.keys import Keyspace
from runtime.core.logs import get_logger
from runtime.core.transport import Delivery, GroupPosition

_log = get_logger("runtime.adapters.redis")


def group_name(keyspace: Keyspace, domain: str, partition: int = 0, partitions: int = 1) -> str:
    """The consumer group of a domain (of one of its partitions when it has several)."""
    return keyspace.group(domain, partition, partitions)


def state_key(keyspace: Keyspace, domain: str, partition: int = 0, partitions: int = 1) -> str:
    """Where the actor's state snapshot is kept."""
    return keyspace.state(domain, partition, partitions)


class RedisSubscription:
    """One consumer of one group on a domain's input streams."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keyspace: Keyspace,
        *,
        domain: str,
        group: str,
        consumer: str,
        streams: Sequence[str],
        start_id: str = "0",
    ) -> None:
        self.redis = redis
        self.keyspace = keyspace
        self.domain = domain
        self.group = group
        self.consumer = consumer
        self._streams = list(streams)
        self.start_id = start_id
        self._conn = RespConnection.of(redis)
        self._group_b = group.encode()
        self._consumer_b = consumer.encode()

    @property
    def streams(self) -> Sequence[str]:
        return self._streams

    async def open(self) -> None:
        for stream in self._streams:
            try:
                await self.redis.xgroup_create(stream, self.group, id=self.start_id, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def fetch(self, *, pending: bool, count: int, block_ms: int) -> list[Delivery]:
        ids = b"0" if pending else b">"
        command: list[Any] = [b"XREADGROUP", b"GROUP", self._group_b, self._consumer_b]
        command += [b"COUNT", count]
        if not pending:
            command += [b"BLOCK", block_ms]
        command.append(b"STREAMS")
        command += self._streams
        command += [ids] * len(self._streams)
        timeout = None if pending else block_ms / 1000 + self._conn.timeout_s
        reply = await self._conn.call(*command, timeout_s=timeout)
        deliveries: list[Delivery] = []
        for stream_name, stream_entries in reply or ():
            stream = stream_name.decode()
            for entry_id, fields in stream_entries:
                # No fields: the entry was trimmed away while pending. Fields without an
                # envelope: a foreign entry, which fails decoding (dead-lettered).
                deliveries.append(Delivery(stream, entry_id, envelope_field(fields), 1))
        merge_by_time(deliveries)
        if pending and deliveries:
            await self._fill_deliveries(deliveries)
        return deliveries

    async def take_over(self) -> int:
        """XAUTOCLAIM with no idle time, to the end of each stream's pending list: the new
        owner (this consumer) then reads them all back, in stream order, as its own. JUSTID:
        a takeover is not a delivery, so the attempt counts stay as they were."""
        taken = 0
        for stream in self._streams:
            cursor: Any = "0-0"
            while True:
                reply = await self._conn.call(
                    "XAUTOCLAIM",
                    stream,
                    self.group,
                    self.consumer,
                    0,
                    cursor,
                    "COUNT",
                    1_000,
                    "JUSTID",
                )
                if not reply:
                    break
                cursor, claimed = reply[0], reply[1]
                taken += len(claimed)
                if cursor in (b"0-0", "0-0"):
                    break
        return taken

    async def _fill_deliveries(self, deliveries: list[Delivery]) -> None:
        """Read each entry's delivery count from the pending list (it survives restarts)."""
        by_stream: dict[str, list[Delivery]] = {}
        for delivery in deliveries:
            by_stream.setdefault(delivery.stream, []).append(delivery)
        for stream, items in by_stream.items():
            ordered = sorted(items, key=lambda d: entry_order(d.entry_id))
            pending = await self.redis.xpending_range(
                stream,
                self.group,
                min=ordered[0].entry_id,
                max=ordered[-1].entry_id,
                count=len(items) + 100,
                consumername=self.consumer,
            )
            counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
            for delivery in items:
                delivery.deliveries = counts.get(delivery.entry_id, delivery.deliveries)

    async def redeliver(self, delivery: Delivery) -> bool:
        claimed = await self.redis.xclaim(
            delivery.stream, self.group, self.consumer, 0, [delivery.entry_id]
        )
        if not claimed or claimed[0][1] is None:
            return False
        delivery.deliveries += 1
        return True

    async def processed(self, event_ids: Sequence[str]) -> set[str]:
        # Grouped by bucket (the id's first characters): one SMISMEMBER per bucket.
        buckets = marks.by_bucket(event_ids)
        bucket = partial(self.keyspace.processed_bucket, self.domain)
        return marks.found(buckets, await self._conn.pipeline(marks.lookups(bucket, buckets)))

    async def recreate(
        self, error: BaseException, after: Mapping[str, bytes]
    ) -> list[tuple[str, bytes]] | None:
        return await recreate_groups(
            self.redis, self._streams, self.group, self.start_id, error, after
        )

    async def positions(self) -> list[GroupPosition]:
        """Pending and lag of this group on each stream (XINFO GROUPS)."""
        return await group_positions(self.redis, self._streams, self.group)

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    async def close(self) -> None:
        await self._conn.close()


def envelope_field(fields: Any) -> bytes | None:
    """The envelope of a raw entry (a flat [k, v, ...] list or a dict); b"" when it has
    none, None when the entry itself is gone."""
    if not fields:
        return None
    if isinstance(fields, dict):
        value = fields.get(ENVELOPE_FIELD)
        return value if isinstance(value, bytes) else b""
    if fields[0] == ENVELOPE_FIELD and len(fields) >= 2:  # the usual shape: one field
        value = fields[1]
        return value if isinstance(value, bytes) else b""
    for index in range(0, len(fields) - 1, 2):
        if fields[index] == ENVELOPE_FIELD:
            value = fields[index + 1]
            return value if isinstance(value, bytes) else b""
    return b""


# What one Redis and a cluster do alike through redis-py's client (a cluster client routes
# each stream's command to its master).


async def recreate_groups(
    client: Any,
    streams: Sequence[str],
    group: str,
    start_id: str,
    error: BaseException,
    after: Mapping[str, bytes],
) -> list[tuple[str, bytes]] | None:
    """After ``error`` said a group is missing (a stream deleted, or Redis restarted without
    its data): create ``group`` again on each stream, after what was read (``after``), else at
    ``start_id``; the (stream, start) of each one created. None for any other error."""
    if not is_missing_group(error):
        return None
    recreated: list[tuple[str, bytes]] = []
    for stream in streams:
        start = after.get(stream, start_id.encode())
        try:
            await client.xgroup_create(stream, group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                continue
            raise
        recreated.append((stream, start))
    return recreated


async def group_positions(client: Any, streams: Sequence[str], group: str) -> list[GroupPosition]:
    """Pending and lag of ``group`` on each stream (XINFO GROUPS)."""
    out: list[GroupPosition] = []
    for stream in streams:
        for info in await client.xinfo_groups(stream):
            name = info.get("name")
            if (name.decode() if isinstance(name, bytes) else name) != group:
                continue
            lag = info.get("lag")
            out.append(
                GroupPosition(
                    stream, group, int(info["pending"]), None if lag is None else int(lag)
                )
            )
    return out
