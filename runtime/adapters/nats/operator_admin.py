"""The writes of ``OperatorStore`` on JetStream (``runtime.core.operator_store``): dead-letter
redrive and purge, state repair, deleting a namespace.

JetStream has no transaction over several messages or keys, so each write is steps ordered
as the Redis Cluster's are (``runtime.adapters.redis.admin``), so that a crash between two
of them cannot make the record lie by omission:

- a redrive publishes the letter's envelope with a message id derived from the domain and
  the letter's id, then creates the letter's note in the KV bucket (``redrive_key``). Two
  concurrent redrives, or one retried after a crash, publish the same message id: JetStream
  stores it once (within the stream's duplicate window), and only one creates the note;
- a purge appends the audit entry first, then deletes each letter's message and note;
- a repair appends its record first, then compare-and-sets the partition's record (the
  state, and ``epoch`` + 1): the owner's next commit, made against the revision it knew,
  fails (``LeaseLost``) and it reloads the repaired state.

The operators' logs are subjects of the ops stream: on ``<ns>.ops.audit`` a message's body
is the audit entry's fields as one JSON object of strings; on ``<ns>.ops.repairs`` the body
is the repair record's bytes, read as the fields ``{b"record": body}``. Each append trims
its subject to the length its caller asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence

import orjson
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from runtime.adapters.nats.connection import PublishItem
from runtime.adapters.nats.log import entry_id as make_entry_id
from runtime.adapters.nats.log import seq_of
from runtime.adapters.nats.operator_reads import JetStreamReads
from runtime.adapters.nats.record import PartitionRecord, now_ms
from runtime.core.operator_store import StoreContended

# How many times a repair tries to replace a partition's record that keeps changing under
# it (its owner commits between the read and the compare-and-set) before giving up.
REPAIR_ATTEMPTS = 50


class JetStreamOperatorStore(JetStreamReads):
    """``OperatorStore`` on one JetStream engine (sharing its connection)."""

    # --- dead letters -------------------------------------------------------------------

    async def redriven(self, domain: str, entry_ids: Sequence[str]) -> list[bytes | None]:
        kv = await self.connection.kv()

        async def note(entry_id: str) -> bytes | None:
            try:
                return (await kv.get(self.names.redrive_key(domain, entry_id))).value
            except KeyNotFoundError:
                return None

        return list(await asyncio.gather(*(note(entry_id) for entry_id in entry_ids)))

    async def redrive(
        self, domain: str, entry_id: str, stream: str, payload: bytes, maxlen: int
    ) -> bool:
        """See the module doc. ``maxlen`` is not used: the events stream keeps each subject
        to the engine's retention, and the append waits for room like a publisher's."""
        kv = await self.connection.kv()
        key = self.names.redrive_key(domain, entry_id)
        try:
            await kv.get(key)
            return False
        except KeyNotFoundError:
            pass
        await self.engine.retention.make_room([stream])
        (seq,) = await self.connection.publish(
            [PublishItem(stream, payload, f"redrive:{domain}:{entry_id}")]
        )
        try:
            await kv.create(key, (await self._entry_id(stream, seq)).encode())
        except KeyWrongLastSequenceError:  # another redrive noted it first (same message)
            return False
        return True

    async def purge_dead_letters(
        self,
        domain: str,
        entry_ids: Sequence[str],
        audit: Mapping[str, str],
        audit_maxlen: int,
    ) -> None:
        """The audit entry first; then each named letter that is still stored as one of
        this domain's, and its redrive note (a letter already gone is skipped)."""
        await self._append(self.keyspace.audit(), orjson.dumps(dict(audit)), audit_maxlen)
        if not entry_ids:
            return
        js = await self.connection.jetstream()
        kv = await self.connection.kv()
        stream, subject = self.names.dlq_stream, self.names.dlq(domain)
        for entry_id in entry_ids:
            seq = seq_of(entry_id)
            try:
                stored = await js.get_msg(stream, seq)
                if stored.subject == subject:
                    await js.delete_msg(stream, seq)
            except NotFoundError:
                pass
            await kv.delete(self.names.redrive_key(domain, entry_id))

    # --- state repair -------------------------------------------------------------------

    def state_name(self, domain: str, partition: int = 0, partitions: int = 1) -> str:
        """``<bucket>/<record key>``: the KV value that holds the partition's state."""
        return f"{self.names.bucket}/{self._record_key(domain, partition, partitions)}"

    async def state_epoch(self, domain: str, partition: int = 0, partitions: int = 1) -> int:
        record, _ = await self._record(self._record_key(domain, partition, partitions))
        return record.epoch

    async def store_repaired_state(
        self,
        domain: str,
        partition: int,
        partitions: int,
        state: bytes,
        record: Callable[[int], bytes],
        records_kept: int,
    ) -> int:
        """The repair record first, then the partition's record with ``state`` and its epoch
        raised, compare-and-set. A write that came between makes this one try again: the
        owner's commit (same epoch: the record is not appended again) or another repair
        (a new epoch: a new record). ``StoreContended`` after ``REPAIR_ATTEMPTS`` tries."""
        kv = await self.connection.kv()
        key = self._record_key(domain, partition, partitions)
        recorded: int | None = None
        for _ in range(REPAIR_ATTEMPTS):
            stored, revision = await self._record(key)
            epoch = stored.epoch + 1
            if recorded != epoch:
                await self._append(self.keyspace.state_repairs(), record(epoch), records_kept)
                recorded = epoch
            stored.state = state
            stored.epoch = epoch
            try:
                if revision:
                    await kv.update(key, stored.encode(), last=revision)
                else:
                    await kv.create(key, stored.encode())
            except KeyWrongLastSequenceError:
                await asyncio.sleep(0.01)
                continue
            return epoch
        raise StoreContended(
            f"the state of {domain} partition {partition}/{partitions} was written "
            f"{REPAIR_ATTEMPTS} times while this repair tried to replace it; its record was "
            "logged but the state not replaced: repair again (or stop the domain first)"
        )

    # --- a run's namespace --------------------------------------------------------------

    async def delete_namespace(self) -> int:
        """Delete the namespace's streams (events, dead letters, traces, operators' logs)
        and KV buckets (records, policy); how many there were. The engine's next use
        creates them again, empty."""
        js = await self.connection.jetstream(ensure=False)
        names = self.names
        streams = [names.events_stream, names.dlq_stream, names.trace_stream, names.ops_stream]
        streams += [f"KV_{bucket}" for bucket in (names.bucket, names.policy_bucket)]  # KV's
        deleted = 0
        for stream in streams:
            with contextlib.suppress(NotFoundError):  # not there: nothing to delete
                deleted += bool(await js.delete_stream(stream))
        self.connection.forget_streams()
        return deleted

    # --- helpers ------------------------------------------------------------------------

    def _record_key(self, domain: str, partition: int, partitions: int) -> str:
        return self.names.record_key(self.keyspace.group(domain, partition, partitions))

    async def _record(self, key: str) -> tuple[PartitionRecord, int]:
        """The stored partition record and its revision (0: none yet)."""
        kv = await self.connection.kv()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return PartitionRecord(), 0
        return PartitionRecord.decode(entry.value), entry.revision or 0

    async def _append(self, subject: str, body: bytes, keep: int) -> None:
        """Append ``body`` to an operators' log, then trim it to its last ``keep`` entries."""
        await self.connection.publish([PublishItem(subject, body, "")])
        js = await self.connection.jetstream()
        await js.purge_stream(self.names.ops_stream, subject=subject, keep=max(keep, 1))

    async def _entry_id(self, subject: str, seq: int) -> str:
        """The entry id of a stored message (server time), or with this process's clock when
        the message is gone already."""
        js = await self.connection.jetstream()
        try:
            stored = await js.get_msg(self.names.stream_of(subject), seq)
        except NotFoundError:
            return make_entry_id(now_ms(), seq)
        at = stored.time
        return make_entry_id(int(at.timestamp() * 1000) if at else now_ms(), seq)
