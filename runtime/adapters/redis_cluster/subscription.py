"""``Subscription`` on a Redis Cluster: one XREADGROUP per master, merged by time.

An XREADGROUP must keep to one slot, so a domain's streams (each in its own slot, spread over
the masters) are read per stream; the streams a master serves go in one pipelined write to
it, the masters are read concurrently, and the replies merged by entry time
(``merge_by_time``), as on a single Redis.

Waiting for new entries on several masters: a blocking read goes to each; when one answers
with entries, the others are released at once (``CLIENT UNBLOCK``: they answer as if their
time ran out, delivering nothing more), so an idle master never delays a busy one and no
read is abandoned with entries in flight (those would sit pending, unseen, until the next
start). Claims, pending counts and group management go through redis-py's cluster client,
which routes them by key; the processed marks, in the partition's slot, are read on a lean
connection to its master.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import hiredis
from redis.exceptions import ResponseError

from runtime.adapters.redis.errors import is_missing_group, is_transient
from runtime.adapters.redis.resp import pack
from runtime.adapters.redis.subscription import envelope_field
from runtime.adapters.redis_cluster.keys import ClusterKeyspace
from runtime.adapters.redis_cluster.nodes import ClusterRouter
from runtime.core.delivery import entry_order, merge_by_time
from runtime.core.keys import PROCESSED_BUCKET_CHARS
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
        self._reads = router.connections()  # blocking reads: nothing else on them
        self._control = router.connections()  # marks, claims, CLIENT UNBLOCK
        self._client_ids: dict[str, int] = {}  # per master: the read connection's CLIENT ID
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
        per_node = self.router.by_node(self._streams)
        if pending or len(per_node) == 1:
            replies = await asyncio.gather(
                *(
                    self._read(node, streams, count, None if pending else block_ms)
                    for node, streams in per_node.items()
                )
            )
        else:
            replies = await self._read_first_answer(per_node, count, block_ms)
        deliveries: list[Delivery] = []
        for reply in replies:
            for stream_name, stream_entries in reply:
                stream = stream_name.decode()
                for entry_id, fields in stream_entries:
                    deliveries.append(Delivery(stream, entry_id, envelope_field(fields), 1))
        merge_by_time(deliveries)
        if pending and deliveries:
            await self._fill_deliveries(deliveries)
        return deliveries

    async def _read(
        self, node: str, streams: list[str], count: int, block_ms: int | None
    ) -> list[Any]:
        """XREADGROUP of the streams one master serves; new entries (blocking up to
        ``block_ms``) or, with None, this consumer's pending ones."""
        command: list[Any] = [b"XREADGROUP", b"GROUP", self._group_b, self._consumer_b]
        command += [b"COUNT", count]
        if block_ms is not None:
            command += [b"BLOCK", block_ms]
        command.append(b"STREAMS")
        command += streams
        command += [b"0" if block_ms is None else b">"] * len(streams)
        conn = self._reads.to(node)
        timeout = None if block_ms is None else block_ms / 1000 + conn.timeout_s
        reply = await conn.call(*command, timeout_s=timeout)
        return list(reply or ())

    async def _read_first_answer(
        self, per_node: dict[str, list[str]], count: int, block_ms: int
    ) -> list[list[Any]]:
        """Blocking reads on every master; once one answers, release the others."""
        for node in per_node:
            if node not in self._client_ids:
                self._client_ids[node] = int(await self._reads.to(node).call("CLIENT", "ID"))
        tasks = {
            node: asyncio.ensure_future(self._read(node, streams, count, block_ms))
            for node, streams in per_node.items()
        }
        try:
            done, waiting = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
            if waiting and any(t.exception() is not None or t.result() for t in done):
                for node, task in tasks.items():
                    if task in waiting:
                        await self._release(node)
            results = await asyncio.gather(*tasks.values(), return_exceptions=True)
        except BaseException:
            for task in tasks.values():
                task.cancel()
            raise
        replies: list[list[Any]] = []
        for result in results:
            if isinstance(result, BaseException):
                # What the others read is pending on this consumer now: the loop reads the
                # pending entries first after an error, so nothing is skipped.
                raise result
            replies.append(result)
        return replies

    async def _release(self, node: str) -> None:
        """CLIENT UNBLOCK this consumer's blocked read on ``node`` (it answers "nothing")."""
        client_id = self._client_ids.get(node)
        if client_id is None:
            return
        released = await self._control.to(node).call("CLIENT", "UNBLOCK", client_id)
        if not released:
            # Not blocked (it had just answered), or the read connection is a new one since
            # its id was asked: ask again before the next blocking read.
            self._client_ids.pop(node, None)

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
        buckets: dict[str, list[str]] = {}
        cut = PROCESSED_BUCKET_CHARS
        for event_id in event_ids:
            ids = buckets.get(event_id[:cut])
            if ids is None:
                buckets[event_id[:cut]] = [event_id]
            else:
                ids.append(event_id)
        if not buckets:
            return set()
        bucket = self.keyspace.processed_bucket
        owner = self._marks_owner
        conn = self._control.of(bucket(owner, ""))  # every bucket: the partition's slot
        replies = await conn.send_packed(
            b"".join(
                pack(b"SMISMEMBER", bucket(owner, ids[0]), *[i[cut:] for i in ids])
                for ids in buckets.values()
            ),
            len(buckets),
        )
        found: set[str] = set()
        for ids, flags in zip(buckets.values(), replies, strict=True):
            if isinstance(flags, hiredis.ReplyError):
                raise ResponseError(str(flags))
            found.update(i for i, flag in zip(ids, flags, strict=True) if flag)
        return found

    async def recreate(
        self, error: BaseException, after: Mapping[str, bytes]
    ) -> list[tuple[str, bytes]] | None:
        if not is_missing_group(error):
            return None
        recreated: list[tuple[str, bytes]] = []
        for stream in self._streams:
            start = after.get(stream, self.start_id.encode())
            try:
                await self.client.xgroup_create(stream, self.group, id=start, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" in str(exc):
                    continue
                raise
            recreated.append((stream, start))
        return recreated

    async def positions(self) -> list[GroupPosition]:
        out: list[GroupPosition] = []
        for stream in self._streams:
            for info in await self.client.xinfo_groups(stream):
                name = info.get("name")
                if (name.decode() if isinstance(name, bytes) else name) != self.group:
                    continue
                lag = info.get("lag")
                out.append(
                    GroupPosition(
                        stream, self.group, int(info["pending"]), None if lag is None else int(lag)
                    )
                )
        return out

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
        await self._reads.close()
        await self._control.close()
