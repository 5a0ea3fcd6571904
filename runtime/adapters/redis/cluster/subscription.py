"""``Subscription`` on a Redis Cluster: one XREADGROUP per stream, merged by time.

An XREADGROUP must keep to one slot, even on one master, so a domain's streams (each in its
own slot, spread over the masters) are read one XREADGROUP each: without blocking, pipelined
per master and the masters concurrently; the replies are merged by entry time
(``merge_by_time``), as on a single Redis.

Only when none of them has anything new does a fetch wait: a blocking read per stream, each
on a connection of its own; when one answers with entries, the others are released at once
(``CLIENT UNBLOCK``: they answer as if their time ran out, delivering nothing), so an idle
stream never delays a busy one and no read is abandoned with entries in flight (those would
sit pending, unseen, until the next start). Claims, pending counts and group management go
through redis-py's cluster client, which routes them by key; XAUTOCLAIM and the processed
marks (in the partition's slot) over lean connections to the masters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import hiredis
from redis.exceptions import ResponseError

from runtime.adapters.redis import marks
from runtime.adapters.redis.cluster.keys import ClusterKeyspace
from runtime.adapters.redis.cluster.nodes import ClusterRouter
from runtime.adapters.redis.errors import is_transient
from runtime.adapters.redis.resp import RespConnection, pack
from runtime.adapters.redis.subscription import envelope_field, group_positions, recreate_groups
from runtime.core.delivery import entry_order, merge_by_time
from runtime.core.transport import Delivery, GroupPosition

T = TypeVar("T")


class ClusterSubscription:
    """One consumer of one group on a domain partition's input streams."""

    def __init__(
        self,
        router: ClusterRouter,
        keyspace: ClusterKeyspace,
        *,
        group: str,
        consumer: str,
        streams: Sequence[str],
        start_id: str = "0",
    ) -> None:
        self.router = router
        self.client = router.client
        self.keyspace = keyspace
        self.group = group
        self.consumer = consumer
        self._streams = list(streams)
        self.start_id = start_id
        # A blocking read per stream, each on its own connection (nothing else on them):
        # stream -> (master, connection), and that connection's CLIENT ID.
        self._readers: dict[str, tuple[str, RespConnection]] = {}
        self._client_ids: dict[str, int] = {}
        self._closing: list[RespConnection] = []
        # New entries read while another stream's read failed: handed out next (``_carry``).
        self._carried: dict[str, list[Any]] = {}
        self._control = router.connections()  # non-blocking reads, marks, claims, UNBLOCK
        self._group_b = group.encode()
        self._consumer_b = consumer.encode()
        # The marks of this partition: keyed by its group, in its slot (ClusterKeyspace).
        self._marks_owner = group

    @property
    def streams(self) -> Sequence[str]:
        return self._streams

    async def open(self) -> None:
        await self._routed(self._create_groups)

    async def _create_groups(self) -> None:
        for stream in self._streams:
            try:
                await self.client.xgroup_create(stream, self.group, id=self.start_id, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def fetch(self, *, pending: bool, count: int, block_ms: int) -> list[Delivery]:
        return await self._routed(lambda: self._fetch(pending, count, block_ms))

    async def _fetch(self, pending: bool, count: int, block_ms: int) -> list[Delivery]:
        if pending:
            self._carried.clear()  # a pending read returns those again, in order
            replies = await self._read_now(count, pending=True)
        else:
            replies = await self._read_now(count, pending=False)
            if not any(replies.values()) and not self._carried:
                replies = await self._wait_for_entries(count, block_ms)
            if self._carried:
                carried, self._carried = self._carried, {}
                for stream, entries in replies.items():  # the carried ones are older
                    carried.setdefault(stream, []).extend(entries)
                replies = carried
        deliveries: list[Delivery] = []
        for stream, entries in replies.items():
            for entry_id, fields in entries:
                deliveries.append(Delivery(stream, entry_id, envelope_field(fields), 1))
        merge_by_time(deliveries)
        if pending and deliveries:
            await self._fill_deliveries(deliveries)
        return deliveries

    def _xreadgroup(self, stream: str, count: int, block_ms: int | None, ids: bytes) -> list[Any]:
        command: list[Any] = [b"XREADGROUP", b"GROUP", self._group_b, self._consumer_b]
        command += [b"COUNT", count]
        if block_ms is not None:
            command += [b"BLOCK", block_ms]
        return [*command, b"STREAMS", stream, ids]

    async def _read_now(self, count: int, *, pending: bool) -> dict[str, list[Any]]:
        """Without blocking: this consumer's pending entries, or the new ones, of every
        stream (one XREADGROUP per stream, pipelined per master, the masters concurrently)."""
        ids = b"0" if pending else b">"
        per_node = self.router.by_node(self._streams)
        nodes = list(per_node)
        replies = await asyncio.gather(
            *(
                self._control.to(node).send_packed(
                    b"".join(
                        pack(*self._xreadgroup(stream, count, None, ids))
                        for stream in per_node[node]
                    ),
                    len(per_node[node]),
                )
                for node in nodes
            ),
            return_exceptions=True,
        )
        out: dict[str, list[Any]] = {}
        failed: BaseException | None = None
        for node, node_replies in zip(nodes, replies, strict=True):
            if isinstance(node_replies, BaseException):
                failed = failed or node_replies
                continue
            for stream, reply in zip(per_node[node], node_replies, strict=True):
                if isinstance(reply, hiredis.ReplyError):
                    failed = failed or ResponseError(str(reply))
                    continue
                out[stream] = list(reply[0][1]) if reply else []
        if failed is not None:
            self._carry(out, pending=pending)
            raise failed
        return out

    def _carry(self, read: dict[str, list[Any]], *, pending: bool) -> None:
        """Keep new entries read from some streams when another stream's read failed: they
        are pending on this consumer now and only a pending read would return them, so the
        next fetch hands them out first (a pending read instead drops them: it has them)."""
        if pending:
            return
        for stream, entries in read.items():
            if entries:
                self._carried.setdefault(stream, []).extend(entries)

    async def _wait_for_entries(self, count: int, block_ms: int) -> dict[str, list[Any]]:
        """A blocking read per stream, each on a connection of its own; once one answers
        with entries, the others are released (see the module doc)."""
        while self._closing:  # connections to a stream's former master
            await self._closing.pop().close()
        if len(self._streams) == 1:
            stream = self._streams[0]
            return {stream: await self._blocking_read(stream, count, block_ms)}
        for stream in self._streams:
            if stream not in self._client_ids:
                conn = self._reader(stream)
                self._client_ids[stream] = int(await conn.call("CLIENT", "ID"))
        tasks = {
            stream: asyncio.ensure_future(self._blocking_read(stream, count, block_ms))
            for stream in self._streams
        }
        try:
            done, waiting = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
            if waiting and any(t.exception() is not None or t.result() for t in done):
                for stream, task in tasks.items():
                    if task in waiting:
                        await self._release(stream)
            results = await asyncio.gather(*tasks.values(), return_exceptions=True)
        except BaseException:
            for task in tasks.values():
                task.cancel()
            raise
        out: dict[str, list[Any]] = {}
        failed: BaseException | None = None
        for stream, result in zip(tasks, results, strict=True):
            if isinstance(result, BaseException):
                failed = failed or result
            else:
                out[stream] = result
        if failed is not None:
            self._carry(out, pending=False)
            raise failed
        return out

    def _reader(self, stream: str) -> RespConnection:
        """The blocking-read connection of one stream (to its master as the map says now)."""
        node = self.router.node_of(stream)
        known = self._readers.get(stream)
        if known is None or known[0] != node:
            if known is not None:
                self._closing.append(known[1])
            known = self._readers[stream] = (
                node,
                RespConnection(self.router.endpoint(node), timeout_s=self.router.timeout_s),
            )
            self._client_ids.pop(stream, None)
        return known[1]

    async def _blocking_read(self, stream: str, count: int, block_ms: int) -> list[Any]:
        conn = self._reader(stream)
        reply = await conn.call(
            *self._xreadgroup(stream, count, block_ms, b">"),
            timeout_s=block_ms / 1000 + conn.timeout_s,
        )
        return list(reply[0][1]) if reply else []

    async def _release(self, stream: str) -> None:
        """CLIENT UNBLOCK the blocked read of ``stream`` (it answers "nothing")."""
        client_id = self._client_ids.get(stream)
        if client_id is None:
            return
        node = self.router.node_of(stream)
        released = await self._control.to(node).call("CLIENT", "UNBLOCK", client_id)
        if not released:
            # Not blocked (it had just answered), or its connection is a new one since its id
            # was asked: ask again before the next blocking read.
            self._client_ids.pop(stream, None)

    async def take_over(self) -> int:
        """XAUTOCLAIM with no idle time, to the end of each stream's pending list (JUSTID: not
        a delivery, the attempt counts stay), on each stream's master."""
        return await self._routed(self._take_over)

    async def _take_over(self) -> int:
        taken = 0
        for stream in self._streams:
            conn = self._control.of(stream)
            cursor: Any = b"0-0"
            while True:
                reply = await conn.call(
                    "XAUTOCLAIM", stream, self.group, self.consumer, 0, cursor, "COUNT", 1_000,
                    "JUSTID",
                )  # fmt: skip
                if not reply:
                    break
                cursor, claimed = reply[0], reply[1]
                taken += len(claimed)
                if cursor == b"0-0":
                    break
        return taken

    async def _fill_deliveries(self, deliveries: list[Delivery]) -> None:
        """Each pending entry's delivery count, from its stream's pending list."""
        by_stream: dict[str, list[Delivery]] = {}
        for delivery in deliveries:
            by_stream.setdefault(delivery.stream, []).append(delivery)
        for stream, items in by_stream.items():
            ordered = sorted(items, key=lambda d: entry_order(d.entry_id))
            pending = await self.client.xpending_range(
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
        claimed = await self.client.xclaim(
            delivery.stream, self.group, self.consumer, 0, [delivery.entry_id]
        )
        if not claimed or claimed[0][1] is None:
            return False
        delivery.deliveries += 1
        return True

    async def processed(self, event_ids: Sequence[str]) -> set[str]:
        return await self._routed(lambda: self._processed(event_ids))

    async def _processed(self, event_ids: Sequence[str]) -> set[str]:
        buckets = marks.by_bucket(event_ids)
        if not buckets:
            return set()
        bucket = partial(self.keyspace.processed_bucket, self._marks_owner)
        conn = self._control.of(bucket(""))  # every bucket: the partition's slot
        return marks.found(buckets, await conn.pipeline(marks.lookups(bucket, buckets)))

    async def recreate(
        self, error: BaseException, after: Mapping[str, bytes]
    ) -> list[tuple[str, bytes]] | None:
        return await recreate_groups(
            self.client, self._streams, self.group, self.start_id, error, after
        )

    async def positions(self) -> list[GroupPosition]:
        return await group_positions(self.client, self._streams, self.group)

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    async def _routed(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` on a fresh slot map; a failure marks the map stale (the loop retries
        transient ones)."""
        try:
            await self.router.ready()
            return await call()
        except Exception as exc:
            self.router.note(exc)
            if is_transient(exc):
                self._client_ids.clear()
            raise

    async def close(self) -> None:
        for _, conn in self._readers.values():
            await conn.close()
        for conn in self._closing:
            await conn.close()
        self._readers.clear()
        await self._control.close()
