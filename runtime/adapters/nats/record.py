"""A domain partition's record: its state and everything its delivery needs to survive a
crash, in ONE KV value, written with compare-and-set on the value's revision.

JetStream has no transaction over several keys, so what Redis keeps in several keys under
one MULTI/EXEC lives here in one value:

- ``state``: the actor's snapshot;
- ``marks``: the event ids committed lately (within the processed-mark horizon, capped),
  for duplicates of an event stored under another entry;
- ``watermarks``: per subject, the last stream sequence a commit handled. Commits handle a
  subject's entries in order, so every entry at or below it is done: this is what makes a
  redelivery after a crash a no-op, exactly, whatever the marks' cap;
- ``consumers``: the consumer names the owner reads through (the next owner deletes them);
- ``earlier``: per subject, ranges of sequences an earlier consumer had delivered without a
  commit (one delivery each); ``retries``: in-place redeliveries per entry. With the
  consumer's own count they give the durable attempt count (``deliveries``);
- ``token``: the lease token of the owner that last wrote it;
- ``epoch``: how many times an operator replaced the state (state repair).

Fencing: taking the lease rewrites the record (the new owner's token), so a stale owner's
next write, made against the revision it knew, fails: ``LeaseLost``. A state repair
(``operator_admin``) rewrites it too, raising ``epoch``: the owner's next write fails the
same way, and it reloads the repaired state.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import orjson
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from runtime.adapters.nats.log import seq_of
from runtime.core.transport import LeaseLost

KvOpener = Callable[[], Awaitable[KeyValue]]  # the engine's bucket, connecting on first use

# Marks kept per partition at most: the record is rewritten by every commit, so it must stay
# small. They are the last line only: JetStream's publish dedupe already drops a duplicate
# entry of an event within its duplicate window, and the watermarks make a redelivery exact.
MAX_MARKS = 512


@dataclass(slots=True)
class PartitionRecord:
    """The decoded value (see the module doc)."""

    token: int = 0
    state: bytes | None = None
    marks: dict[str, int] = field(default_factory=dict)  # event id -> committed at (ms)
    watermarks: dict[str, int] = field(default_factory=dict)
    consumers: dict[str, str] = field(default_factory=dict)  # subject -> consumer name
    earlier: dict[str, list[list[int]]] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)  # "<subject> <seq>" -> count
    epoch: int = 0

    def encode(self) -> bytes:
        header = {
            "token": self.token,
            "has_state": self.state is not None,
            "marks": self.marks,
            "watermarks": self.watermarks,
            "consumers": self.consumers,
            "earlier": self.earlier,
            "retries": self.retries,
            "epoch": self.epoch,
        }
        return orjson.dumps(header) + b"\n" + (self.state or b"")

    @classmethod
    def decode(cls, value: bytes | None) -> PartitionRecord:
        if not value:
            return cls()
        head, _, state = value.partition(b"\n")
        header = orjson.loads(head)
        return cls(
            token=int(header.get("token", 0)),
            state=state if header.get("has_state") else None,
            marks=dict(header.get("marks", {})),
            watermarks=dict(header.get("watermarks", {})),
            consumers=dict(header.get("consumers", {})),
            earlier={k: [list(r) for r in v] for k, v in header.get("earlier", {}).items()},
            retries=dict(header.get("retries", {})),
            epoch=int(header.get("epoch", 0)),
        )

    def copy(self) -> PartitionRecord:
        """A record to change and write (the held one changes only once a write landed)."""
        return PartitionRecord(
            token=self.token,
            state=self.state,
            marks=dict(self.marks),
            watermarks=dict(self.watermarks),
            consumers=dict(self.consumers),
            earlier={k: [list(r) for r in v] for k, v in self.earlier.items()},
            retries=dict(self.retries),
            epoch=self.epoch,
        )

    def deliveries(self, subject: str, seq: int, delivered: int) -> int:
        """The durable attempt count of an entry its current consumer delivered
        ``delivered`` times."""
        count = delivered
        ranges = self.earlier.get(subject)
        if ranges:
            count += sum(1 for first, last in ranges if first <= seq <= last)
        if self.retries:
            count += self.retries.get(f"{subject} {seq}", 0)
        return count

    def handled(self, subject: str, seq: int) -> bool:
        return seq <= self.watermarks.get(subject, 0)

    def prune(self, now_ms: int, ttl_ms: int) -> None:
        """Drop what no redelivery can need any more."""
        marks = self.marks
        if marks:
            cutoff = now_ms - ttl_ms
            if len(marks) > MAX_MARKS or next(iter(marks.values())) < cutoff:
                recent = [(i, at) for i, at in marks.items() if at >= cutoff]
                self.marks = dict(recent[-MAX_MARKS:])
        if self.earlier:
            self.earlier = {
                subject: kept
                for subject, ranges in self.earlier.items()
                if (kept := [r for r in ranges if r[1] > self.watermarks.get(subject, 0)])
            }
        if self.retries:
            self.retries = {
                key: n
                for key, n in self.retries.items()
                if int(key.rsplit(" ", 1)[1]) > self.watermarks.get(key.rsplit(" ", 1)[0], 0)
            }


class Partition:
    """A domain partition as its owner holds it: the record and the revision it last read or
    wrote, and the entries in hand (delivered and not yet acknowledged) per subject, with
    their acknowledgement subjects. Shared by the partition's subscription and committer."""

    def __init__(self, kv_opener: KvOpener, key: str) -> None:
        self._kv = kv_opener
        self.key = key
        self.record = PartitionRecord()
        self.revision: int | None = None  # None: not known (read before the next write)
        self.token: int | None = None  # the lease token this process holds the partition by
        # The state epoch of the state this owner's actor was restored from (None: not yet
        # restored): a record of another epoch was repaired since, and must be reloaded.
        self.loaded_epoch: int | None = None
        self.in_hand: dict[str, deque[tuple[int, str]]] = {}
        # Acknowledged entries still behind one that is not (a retry in place, or an entry
        # acknowledged when its batch was prepared): the watermark waits for the gap.
        self.done: dict[str, set[int]] = {}

    async def peek(self) -> tuple[PartitionRecord, int]:
        """The stored record and its revision (0: none yet), changing nothing held."""
        kv = await self._kv()
        try:
            entry = await kv.get(self.key)
        except KeyNotFoundError:
            return PartitionRecord(), 0
        return PartitionRecord.decode(entry.value), entry.revision or 0

    async def read(self) -> PartitionRecord:
        """The stored record; its revision becomes the one the next write expects (only
        ``current`` and the lease's takeover adopt it)."""
        self.record, self.revision = await self.peek()
        return self.record

    async def current(self, token: int | None) -> PartitionRecord:
        """The record this owner may change: the one it holds when it knows the revision,
        else the stored one, which must carry its ``token`` (``LeaseLost`` otherwise: a
        newer owner took the partition while this one could not tell) and the state epoch
        of the one it held (``LeaseLost`` otherwise: an operator repaired the state, which
        this owner must reload rather than overwrite)."""
        if self.revision is not None:
            return self.record
        held_epoch = self.loaded_epoch if self.loaded_epoch is not None else self.record.epoch
        stored = await self.read()
        if token is not None and stored.token != token:
            self.revision = None
            raise LeaseLost(
                f"{self.key}: the record belongs to lease token {stored.token} now, not to "
                f"this owner's {token}; another owner took the partition over"
            )
        if token is not None and stored.epoch != held_epoch:
            self.revision = None
            raise LeaseLost(
                f"{self.key}: its state was repaired (epoch {held_epoch} -> {stored.epoch}); "
                "the owner reloads it and handles its pending entries again"
            )
        return stored

    async def write(self, record: PartitionRecord, token: int | None) -> None:
        """Store ``record`` (made from ``current``) if the stored one is still the revision
        this owner knows; raise ``LeaseLost`` when another owner wrote since."""
        kv = await self._kv()
        if self.revision is None:
            await self.current(token)  # a write that only fails here was built on old data
            raise LeaseLost(f"{self.key}: the record changed under this owner; try again")
        value = record.encode()
        try:
            if self.revision:
                revision = await kv.update(self.key, value, last=self.revision)
            else:
                revision = await kv.create(self.key, value)
        except KeyWrongLastSequenceError as exc:  # also what create() says of a taken key
            self.revision = None
            raise LeaseLost(
                f"{self.key}: another owner wrote the record since revision this owner knew "
                f"({exc}); its commit is void"
            ) from None
        except BaseException:
            self.revision = None  # the write may have landed: read before the next one
            raise
        self.record = record
        self.revision = revision

    def settled(self, acks: Mapping[str, list[bytes]]) -> dict[str, Settled]:
        """Per subject, how far the entries in hand are done, with no gap, once ``acks``
        are: the watermark a commit may write and the entry to acknowledge (ack-all).
        Changes nothing (``settle`` does, once the commit is stored)."""
        out: dict[str, Settled] = {}
        for subject, ids in acks.items():
            seqs = {seq_of(entry) for entry in ids}
            hand = self.in_hand.get(subject)
            if not hand:  # a commit made outside a fetch: what it names is all there is
                out[subject] = Settled(max(seqs), 0, "")
                continue
            done = self.done.get(subject, set()) | seqs
            count, last, reply = 0, 0, ""
            for seq, ack_subject in hand:
                if seq not in done:
                    break
                count, last, reply = count + 1, seq, ack_subject
            if count:
                out[subject] = Settled(last, count, reply)
        return out

    def settle(self, acks: Mapping[str, list[bytes]], settled: Mapping[str, Settled]) -> None:
        """Take a stored commit's entries out of hand (see ``settled``)."""
        for subject, ids in acks.items():
            done = self.done.setdefault(subject, set())
            done.update(seq_of(entry) for entry in ids)
            progress = settled.get(subject)
            hand = self.in_hand.get(subject)
            if progress is None or not hand:
                continue
            for _ in range(progress.count):
                done.discard(hand.popleft()[0])

    def forget_in_hand(self) -> None:
        self.in_hand.clear()
        self.done.clear()


class Settled:
    """How far a subject's entries in hand are done: the last one, how many entries of the
    hand that is, and its acknowledgement subject ("" when not in hand)."""

    __slots__ = ("ack_subject", "count", "last")

    def __init__(self, last: int, count: int, ack_subject: str) -> None:
        self.last = last
        self.count = count
        self.ack_subject = ack_subject


def now_ms() -> int:
    return time.time_ns() // 1_000_000
