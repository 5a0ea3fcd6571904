"""``Committer`` on JetStream, which has no transaction over several keys: the steps of a
commit are ordered so that each guarantee holds after a crash between any two of them.

1. Outputs and dead letters are published, each with a message id (derived from the
   input: ``runtime.core.ids``), and their acknowledgements awaited. A crash after this:
   the inputs come back, their outputs come out again with the same ids, and JetStream
   stores them once (publish dedupe).
2. The partition's record (``record.PartitionRecord``: state, processed marks, watermarks)
   is written as ONE KV value, compare-and-set on the revision this owner knows. Taking the
   lease rewrites the record, so a stale owner's write fails: ``LeaseLost`` (fencing). From
   here on the batch is committed.
   A watermark moves only over entries done with no gap (``Partition.settled``): an entry
   acknowledged when its batch was prepared may lie past one still retried in place.
3. The inputs are acknowledged (ack-all of the last entry done with no gap, then a flush).
   A crash before this: the next owner positions after the record's watermarks, so nothing
   is read twice; acknowledgements only tell the server (and operators) how far the group
   is.

The lease is a KV key with the holder, its fencing token (the key's revision when it was
taken: strictly increasing) and its expiry in the value (2.9's KV has no per-key TTL); every
change is a compare-and-set on the key's revision.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from runtime.adapters.nats.connection import API_TIMEOUT_S, Connection, PublishItem
from runtime.adapters.nats.dead_letters import letter_item
from runtime.adapters.nats.errors import is_transient
from runtime.adapters.nats.record import Partition, now_ms
from runtime.adapters.nats.retention import SubjectRetention
from runtime.core.logs import get_logger
from runtime.core.transport import Backpressure, Commit, Lease, LeaseLost

_log = get_logger("runtime.adapters.nats")
_ACK = b"+ACK"
_BUMP_ATTEMPTS = 10


class _LeaseValue:
    """The lease key's value as read: holder, token, expiry, and the key's revision."""

    __slots__ = ("expires_ms", "holder", "revision", "token")

    def __init__(self, holder: str, token: int, expires_ms: int, revision: int) -> None:
        self.holder = holder
        self.token = token
        self.expires_ms = expires_ms
        self.revision = revision


class JetStreamCommitter:
    """Commits one domain partition's batches and keeps its lease."""

    def __init__(
        self,
        connection: Connection,
        partition: Partition,
        subject_of: Callable[[str], str],
        topic_of: Callable[[str, str], str],
        *,
        domain: str,
        group: str,
        processed_ttl_s: int,
        trace_index: bool = True,
        retention: SubjectRetention | None = None,
    ) -> None:
        self.connection = connection
        self.partition = partition
        self.domain = domain
        self.group = group
        names = connection.names
        self._subject_of = subject_of
        self._topic_of = topic_of
        self._dlq = names.dlq(domain)
        self._lease_key = names.lease_key(group)
        self._heartbeat_key = names.heartbeat_key
        self._ttl_ms = processed_ttl_s * 1000
        self._trace_of = names.trace if trace_index else None
        self._retention = retention

    async def load_state(self) -> bytes | None:
        partition = self.partition
        if partition.revision is not None:
            partition.loaded_epoch = partition.record.epoch
            return partition.record.state
        stored, _ = await partition.peek()  # a read only: adopting its revision would unfence
        partition.loaded_epoch = stored.epoch  # what the actor holds from now on
        return stored.state

    # -- commit -----------------------------------------------------------------------------

    async def commit(self, commit: Commit) -> None:
        partition = self.partition
        lease = commit.lease
        if lease is not None and partition.token is not None and lease.token != partition.token:
            raise LeaseLost(f"{self.group}: lease token {lease.token} is no longer this owner's")
        # 1. outputs and dead letters, deduped by message id
        items = [
            PublishItem(
                self._subject_of(self._topic_of(envelope.event_type, envelope.partition_key)),
                envelope.SerializeToString(),
                envelope.event_id,
            )
            for envelope in commit.outputs
        ]
        items += [letter_item(self._dlq, letter) for letter in commit.dead]
        if self._trace_of is not None and (commit.outputs or commit.indexed):
            items += self._trace_items(commit, items)
        if commit.outputs and self._retention is not None:
            await self._room_for(items[: len(commit.outputs)])
        if items:
            await self.connection.publish(items)
        # 2. the record, compare-and-set (fenced)
        token = lease.token if lease is not None else partition.token
        record = (await partition.current(token)).copy()
        if commit.state is not None:
            record.state = commit.state
        now = now_ms()
        if commit.processed:
            marks = record.marks
            for event_id in commit.processed:
                marks[event_id] = now
        # Watermarks move over what is done with no gap: an entry acknowledged when its
        # batch was prepared (undecodable, another partition's key) may lie past one still
        # being retried, which a crash must not skip.
        settled = partition.settled(commit.acks)
        watermarks = record.watermarks
        for subject, progress in settled.items():
            if progress.last > watermarks.get(subject, 0):
                watermarks[subject] = progress.last
        record.prune(now, self._ttl_ms)
        await partition.write(record, token)
        partition.settle(commit.acks, settled)
        # 3. acknowledgements (the server's view of the group; correctness is step 2's)
        replies = [p.ack_subject for p in settled.values() if p.ack_subject]
        if replies:
            await self._acknowledge(replies)

    async def _room_for(self, outputs: list[PublishItem]) -> None:
        """Wait until every output subject has room: a runner never drops its outputs. It
        waits as long as it takes (its own inputs then back up to the feed), saying so."""
        assert self._retention is not None
        while True:
            try:
                await self._retention.make_room(item.subject for item in outputs)
                return
            except Backpressure as exc:
                _log.warning("outputs_waiting_for_room", domain=self.domain, error=str(exc))

    def _trace_items(self, commit: Commit, published: list[PublishItem]) -> list[PublishItem]:
        """The trace index: each output, and each root that caused outputs, on its trace's
        subject (message ids dedupe a redone commit, as for the outputs)."""
        trace_of = self._trace_of
        assert trace_of is not None
        out = [
            PublishItem(trace_of(root.trace_id), root.SerializeToString(), f"trace:{root.event_id}")
            for root in commit.indexed
        ]
        out += [
            PublishItem(trace_of(envelope.trace_id), item.data, f"trace:{envelope.event_id}")
            for envelope, item in zip(commit.outputs, published, strict=False)
        ]
        return out

    async def _acknowledge(self, replies: list[str]) -> None:
        nc = await self.connection.client()
        for reply in replies:
            await nc.publish(reply, _ACK)  # ack-all: every entry up to this one
        await nc.flush(timeout=API_TIMEOUT_S)

    # -- the lease --------------------------------------------------------------------------

    async def acquire(self, holder: str, ttl_ms: int) -> Lease | None:
        kv = await self.connection.kv()
        current = await self._read_lease()
        now = now_ms()
        if current is not None and current.holder != holder and current.expires_ms > now:
            return None
        try:
            if current is not None and current.holder == holder:
                token = current.token
                await kv.update(
                    self._lease_key,
                    _lease_value(holder, token, now + ttl_ms),
                    last=current.revision,
                )
            else:
                value = _lease_value(holder, 0, now + ttl_ms)
                if current is None:
                    token = await kv.create(self._lease_key, value)
                else:
                    token = await kv.update(self._lease_key, value, last=current.revision)
        except KeyWrongLastSequenceError:
            return None  # another process took it between the read and the write
        await self._bump_record(token)
        return Lease(holder, token)

    async def _bump_record(self, token: int) -> None:
        """Write the new owner's token into the partition's record: from here on a stale
        owner's commit, made against an older revision, fails."""
        partition = self.partition
        partition.token = token
        for _ in range(_BUMP_ATTEMPTS):
            partition.revision = None
            record = (await partition.current(None)).copy()
            record.token = token
            try:
                await partition.write(record, None)
                return
            except LeaseLost:
                continue  # a stale owner's commit landed in between: read it and try again
        raise LeaseLost(
            f"{self.group}: could not take over the record after {_BUMP_ATTEMPTS} tries"
        )

    async def renew(self, lease: Lease, ttl_ms: int) -> bool:
        current = await self._read_lease()
        if current is None or current.holder != lease.holder or current.token != lease.token:
            return False
        kv = await self.connection.kv()
        try:
            await kv.update(
                self._lease_key,
                _lease_value(lease.holder, lease.token, now_ms() + ttl_ms),
                last=current.revision,
            )
        except KeyWrongLastSequenceError:
            return False
        return True

    async def release(self, lease: Lease) -> None:
        current = await self._read_lease()
        if current is None or current.holder != lease.holder or current.token != lease.token:
            return
        kv = await self.connection.kv()
        try:
            await kv.update(
                self._lease_key, _lease_value(lease.holder, lease.token, 0), last=current.revision
            )
        except KeyWrongLastSequenceError:
            return

    async def _read_lease(self) -> _LeaseValue | None:
        kv = await self.connection.kv()
        try:
            entry = await kv.get(self._lease_key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        fields = orjson.loads(entry.value)
        revision = entry.revision or 0
        return _LeaseValue(
            str(fields["holder"]),
            int(fields.get("token") or revision),  # 0: taken by this very revision
            int(fields["expires_ms"]),
            revision,
        )

    # -- the rest ---------------------------------------------------------------------------

    async def heartbeat(self, consumer: str, at_ms: int) -> None:
        kv = await self.connection.kv()
        await kv.put(self._heartbeat_key(self.domain, consumer), str(at_ms).encode())

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    async def close(self) -> None:
        return None


def _lease_value(holder: str, token: int, expires_ms: int) -> bytes:
    return orjson.dumps({"holder": holder, "token": token, "expires_ms": expires_ms})
