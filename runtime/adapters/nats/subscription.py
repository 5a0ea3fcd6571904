"""``Subscription`` on JetStream: one durable pull consumer per (domain partition, subject).

JetStream 2.9 gives a consumer one filter subject, so a domain partition reading several
topics has one consumer per topic; a fetch pulls from all of them and merges the entries by
stream sequence (one stream holds every topic, so that is their storage order).

Pulls are made by hand on one inbox per positioning, not with ``nats-py``'s ``fetch``:
entries a pull request brings after the fetch that asked for them stopped waiting land in a
buffer and are handed out by the next fetch, never dropped on the floor (an entry dropped in
transit stays "delivered" on the server and would come back only after its ack wait).

Positioning instead of redelivery by the server. The partition's record holds, per subject,
the last sequence a commit handled (its watermark). A new owner, or this one after any
broker error, *positions*: it writes the record (fenced by the lease token: a stale owner's
write fails with ``LeaseLost``), creates fresh consumers that start right after the
watermarks, and deletes the last ones. So a takeover hands the new owner, at once and in
stream order, every entry the last owner left without a commit, and an entry lost in
transit is read again. Consumer names carry the lease token: a stale owner pulls from a
consumer its successor deleted, never from the successor's.

Durable attempt counts: the consumer counts its own deliveries; positioning records, for the
entries the old consumer had delivered past the watermark, one earlier delivery each; an
in-place retry (``redeliver``) is recorded in the record too. Their sum is
``Delivery.deliveries`` (``PartitionRecord.deliveries``).

A group exists from ``open`` on, before its first owner positions: a placeholder consumer
(lease token 0) that nobody pulls from holds the group's unread entries (``retention``) and
marks where a group that reads only new entries began.

Keeping entries alive: the consumers' ack wait is long (``ACK_WAIT_S``) because nothing
relies on the server redelivering: takeover and recovery position instead. An entry the
server redelivers anyway (a handler slower than the ack wait) is dropped on arrival: it is
already in hand.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Mapping, Sequence

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import NotFoundError

from runtime.adapters.nats.connection import Connection
from runtime.adapters.nats.errors import Reconnected, is_transient
from runtime.adapters.nats.log import entry_id
from runtime.adapters.nats.names import JetStreamNames
from runtime.adapters.nats.pulls import Arrived, Puller
from runtime.adapters.nats.record import Partition
from runtime.core.logs import get_logger
from runtime.core.transport import Delivery, GroupPosition, LeaseLost

_log = get_logger("runtime.adapters.nats")

ACK_WAIT_S = 3_600.0
MAX_ACK_PENDING = 100_000


class JetStreamSubscription:
    """One domain partition's consumers on its input subjects."""

    def __init__(
        self,
        connection: Connection,
        partition: Partition,
        *,
        domain: str,
        group: str,
        subjects: Sequence[str],
        start_id: str = "0",
    ) -> None:
        self.connection = connection
        self.names: JetStreamNames = connection.names
        self.partition = partition
        self.domain = domain
        self.group = group
        self._subjects = list(subjects)
        self.start_id = start_id
        self._puller = Puller()
        self._positioned_epoch: int | None = None
        self._generation = 0
        self._fetched: dict[str, tuple[str, int]] = {}  # event id -> (subject, seq)

    @property
    def streams(self) -> Sequence[str]:
        return self._subjects

    async def open(self) -> None:
        """Make sure the group exists on each subject before this process owns it, as a
        consumer group does on Redis: a placeholder consumer that nobody pulls from holds
        the subject's unread entries for the group (retention) until its first owner
        positions and deletes it."""
        js = await self.connection.jetstream()
        stored, _ = await self.partition.peek()
        stream = self.names.events_stream
        for subject in self._subjects:
            if subject in stored.consumers:
                continue  # positioned before: that consumer holds the subject
            name = self._placeholder(subject)
            try:
                await js.consumer_info(stream, name)
                continue
            except NotFoundError:
                pass
            mark = stored.watermarks.get(subject)
            if mark is not None:
                policy, start = DeliverPolicy.BY_START_SEQUENCE, mark + 1
            else:
                policy = DeliverPolicy.NEW if self.start_id == "$" else DeliverPolicy.ALL
                start = None
            await js.add_consumer(stream, self._config(name, subject, policy, start))
            # An owner that positioned meanwhile deletes placeholders only once: if it did
            # before this one existed, this one must go now or it would hold the subject.
            again, _ = await self.partition.peek()
            if subject in again.consumers:
                with contextlib.suppress(NotFoundError):
                    await js.delete_consumer(stream, name)

    def _placeholder(self, subject: str) -> str:
        return self.names.consumer(self.group, subject, 0, 0)

    def _config(
        self, name: str, subject: str, policy: DeliverPolicy, start: int | None
    ) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=name,
            description=f"group {self.group} of domain {self.domain}",
            ack_policy=AckPolicy.ALL,
            ack_wait=ACK_WAIT_S,
            max_deliver=-1,
            max_ack_pending=MAX_ACK_PENDING,
            filter_subject=subject,
            deliver_policy=policy,
            opt_start_seq=start,
        )

    # -- positioning ------------------------------------------------------------------------

    async def take_over(self) -> int:
        try:
            return await self._position()
        except LeaseLost:
            # Lost again at once: the first fetch positions again and meets it there, where
            # the delivery loop stands by instead of failing.
            self._positioned_epoch = None
            return 0

    async def _position(self) -> int:
        """Consumers from the record's watermarks on (see the module doc); returns how many
        entries the last consumers held delivered and unacknowledged."""
        js = await self.connection.jetstream()
        nc = await self.connection.client()
        epoch = self.connection.epoch
        partition = self.partition
        token = partition.token
        stored = await partition.current(token)
        if token is None:
            token = stored.token
        record = stored.copy()
        stream = self.names.events_stream
        taken = 0
        old = {*record.consumers.values(), *map(self._placeholder, self._subjects)}
        for subject in self._subjects:
            placeholder = await _info(js, stream, self._placeholder(subject))
            mark = record.watermarks.get(subject)
            if mark is None:
                mark = 0
                if placeholder is not None and placeholder.delivered is not None:
                    mark = placeholder.delivered.stream_seq or 0  # where the group began
                elif self.start_id == "$":  # a new group reads only what comes next
                    mark = (await js.stream_info(stream)).state.last_seq
                record.watermarks[subject] = mark
            name = record.consumers.get(subject)
            info = await _info(js, stream, name) if name else None
            if info is None:
                continue
            taken += info.num_ack_pending or 0
            delivered = (info.delivered.stream_seq if info.delivered else 0) or 0
            if delivered > mark:  # delivered once without a commit: counts as an attempt
                record.earlier.setdefault(subject, []).append([mark + 1, delivered])
        self._generation += 1
        record.consumers = {
            subject: self.names.consumer(self.group, subject, token, self._generation)
            for subject in self._subjects
        }
        await partition.write(record, token)  # fencing: a stale owner stops here
        for subject, name in record.consumers.items():
            await js.add_consumer(
                stream,
                self._config(
                    name,
                    subject,
                    DeliverPolicy.BY_START_SEQUENCE,
                    record.watermarks[subject] + 1,
                ),
            )
        for name in old - set(record.consumers.values()):
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(stream, name)
        await self._puller.start(nc, stream, record.consumers, record.watermarks)
        partition.forget_in_hand()
        self._positioned_epoch = epoch
        return taken

    # -- fetching ---------------------------------------------------------------------------

    async def fetch(self, *, pending: bool, count: int, block_ms: int) -> list[Delivery]:
        try:
            if self._positioned_epoch != self.connection.epoch:
                if not pending:
                    self._positioned_epoch = None
                    raise Reconnected(
                        f"{self.group}: the connection to NATS dropped since its consumers "
                        "were positioned; positioning again from the committed record"
                    )
                await self._position()
            nc = await self.connection.client()
            arrived = await self._puller.pull(nc, count, None if pending else block_ms)
        except LeaseLost:
            raise
        except BaseException:
            self._positioned_epoch = None  # whatever was in flight: position again
            raise
        return self._deliveries(arrived)

    def _deliveries(self, arrived: list[tuple[str, Arrived]]) -> list[Delivery]:
        record = self.partition.record
        in_hand = self.partition.in_hand
        fetched: dict[str, tuple[str, int]] = {}
        out: list[Delivery] = []
        for subject, item in arrived:
            seq = item.seq
            out.append(
                Delivery(
                    subject,
                    entry_id(item.ms, seq).encode(),
                    item.data,
                    record.deliveries(subject, seq, item.delivered),
                )
            )
            hand = in_hand.get(subject)
            if hand is None:
                hand = in_hand[subject] = deque()
            hand.append((seq, item.reply))
            if item.event_id:
                fetched[item.event_id] = (subject, seq)
        self._fetched = fetched
        return out

    # -- retries, marks, positions ------------------------------------------------------------

    async def redeliver(self, delivery: Delivery) -> bool:
        """A retry in place: the entry stays in hand; the record counts the new delivery
        (written fenced: a stale owner gets ``LeaseLost``)."""
        partition = self.partition
        record = (await partition.current(partition.token)).copy()
        seq = int(delivery.entry_id.rpartition(b"-")[2])
        key = f"{delivery.stream} {seq}"
        record.retries[key] = record.retries.get(key, 0) + 1
        await partition.write(record, partition.token)
        delivery.deliveries += 1
        return True

    async def processed(self, event_ids: Sequence[str]) -> set[str]:
        record = self.partition.record
        marks = record.marks
        fetched = self._fetched
        found: set[str] = set()
        for event_id in event_ids:
            if event_id in marks:
                found.add(event_id)
                continue
            where = fetched.get(event_id)
            if where is not None and record.handled(*where):
                found.add(event_id)
        return found

    async def recreate(
        self, error: BaseException, after: Mapping[str, bytes]
    ) -> list[tuple[str, bytes]] | None:
        return None  # a deleted consumer is met by positioning again (``Reconnected``)

    async def positions(self) -> list[GroupPosition]:
        js = await self.connection.jetstream()
        out: list[GroupPosition] = []
        for subject, name in self._puller.consumers.items():
            try:
                info = await js.consumer_info(self.names.events_stream, name)
            except NotFoundError:
                continue
            out.append(
                GroupPosition(subject, self.group, info.num_ack_pending or 0, info.num_pending)
            )
        return out

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    async def close(self) -> None:
        await self._puller.stop()


async def _info(js: JetStreamContext, stream: str, name: str) -> ConsumerInfo | None:
    try:
        info: ConsumerInfo = await js.consumer_info(stream, name)
    except NotFoundError:
        return None
    return info
