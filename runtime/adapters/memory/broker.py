"""The in-memory broker: an event log of streams with consumer groups, in one process.

It keeps what Redis keeps for the runtime, as plain Python structures: one list of entries
per stream (entry ids ``<n>-0``, ``n`` counting every append of the broker, so ids order all
streams together), consumer groups with a read cursor and a pending list (owner, delivery
count, idle time), processed marks, dead letters, actor state per domain partition, the trace
index and heartbeats. Nothing is trimmed or expires: a run's whole history stays readable
(``entries``), which is what a backtest reports from.

Every mutation is synchronous: no await happens inside one, so each is atomic with respect
to every other coroutine of the process. ``apply_commit`` applies a whole ``Commit`` that way.

With a ``LogicalScheduler`` attached (``logical=True``), new entries are not read freely:
the scheduler decides which group gets which entry next, in event-time order (see
``runtime.adapters.memory.scheduler``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from quantum.events.v1.envelope_pb2 import Envelope

from runtime.core.dead_letters import DeadLetter
from runtime.core.delivery import entry_order
from runtime.core.keys import Keyspace
from runtime.core.partitioning import UNPARTITIONED, Partitioning
from runtime.core.transport import Commit, Delivery, Lease

if TYPE_CHECKING:
    from runtime.adapters.memory.scheduler import LogicalScheduler

EventTime = tuple[int, int]  # (seconds, nanos) of an envelope's occurred_at; (0, 0) unknown


class MemoryBrokerDown(ConnectionError):
    """The broker was taken down (``MemoryBroker.go_down``, to rehearse an outage).

    Transient: every operation fails with it until ``come_back``; the runtime retries.
    """


class MissingGroup(LookupError):
    """A consumer group that does not exist (never created, or destroyed)."""

    def __init__(self, stream: str, group: str) -> None:
        super().__init__(
            f"NOGROUP: no consumer group {group!r} on stream {stream!r}; create it first "
            "(Subscription.open)"
        )
        self.stream = stream
        self.group = group


@dataclass(slots=True)
class StoredEntry:
    """One entry of a stream: its id, the serialized envelope and the envelope's event time."""

    entry_id: bytes
    data: bytes
    at: EventTime
    seq: int


@dataclass(slots=True)
class PendingEntry:
    """An entry delivered to a consumer of a group and not yet acknowledged."""

    consumer: str
    deliveries: int
    since: float  # the broker clock when it was last delivered, claimed or kept alive


class _Group:
    __slots__ = ("cursor", "pending")

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor  # index of the first entry never delivered to this group
        self.pending: dict[bytes, PendingEntry] = {}


class _Stream:
    __slots__ = ("entries", "groups", "index")

    def __init__(self) -> None:
        self.entries: list[StoredEntry] = []
        self.index: dict[bytes, int] = {}
        self.groups: dict[str, _Group] = {}


def event_time(envelope: Envelope) -> EventTime:
    """An envelope's event time as a sortable pair."""
    at = envelope.occurred_at
    return at.seconds, at.nanos


def event_time_of(data: bytes) -> EventTime:
    """The event time of a serialized envelope; (0, 0) when it does not decode."""
    try:
        return event_time(Envelope.FromString(data))
    except Exception:  # a foreign entry: delivered at once, and dead-lettered by the runtime
        return 0, 0


class MemoryBroker:
    """Streams, groups, marks, dead letters, state and trace index of one in-process system."""

    def __init__(
        self,
        keyspace: Keyspace | None = None,
        *,
        logical: bool = False,
        clock: Callable[[], float] = time.monotonic,
        partitioning: Partitioning | None = None,
    ) -> None:
        self.keyspace = keyspace or Keyspace("memory")
        self.partitioning = partitioning or UNPARTITIONED
        self.clock = clock
        self._streams: dict[str, _Stream] = {}
        self._log: list[tuple[str, StoredEntry]] = []  # every append of every stream, in order
        self._dead_seq = 0
        self.processed_marks: dict[str, set[str]] = {}
        self.dead_letters: dict[str, list[DeadLetter]] = {}
        self.states: dict[str, bytes] = {}
        self.traces: dict[str, list[bytes]] = {}
        self.heartbeats: dict[str, dict[str, int]] = {}
        self.leases: dict[str, Lease] = {}  # group -> its owner (one process: no expiry)
        self.fencing_token = 0
        self.commits = 0
        self._down = False
        self._appended: asyncio.Event | None = None
        self.scheduler: LogicalScheduler | None = None
        if logical:
            from runtime.adapters.memory.scheduler import LogicalScheduler

            self.scheduler = LogicalScheduler(self)

    # -- availability (outage rehearsal) ------------------------------------------------------

    def go_down(self) -> None:
        """Fail every operation with ``MemoryBrokerDown`` until ``come_back``."""
        self._down = True

    def come_back(self) -> None:
        self._down = False

    def check(self) -> None:
        if self._down:
            raise MemoryBrokerDown("the in-memory broker is down (go_down was called)")

    # -- the log ------------------------------------------------------------------------------

    def stream_of(self, topic: str) -> str:
        """The stream of a topic (an event type, or one partition of it)."""
        return self.keyspace.stream(topic)

    def stream_of_envelope(self, envelope: Envelope) -> str:
        """The stream an envelope goes to: its type's partition for its key."""
        topic = self.partitioning.topic(envelope.event_type, envelope.partition_key)
        return self.keyspace.stream(topic)

    def append(self, stream: str, data: bytes, at: EventTime = (0, 0)) -> bytes:
        """Store one entry at the end of ``stream``; return its id."""
        self.check()
        seq = len(self._log) + 1
        entry = StoredEntry(f"{seq}-0".encode(), data, at, seq)
        target = self._streams.get(stream)
        if target is None:
            target = self._streams[stream] = _Stream()
        target.index[entry.entry_id] = len(target.entries)
        target.entries.append(entry)
        self._log.append((stream, entry))
        if self.scheduler is not None:
            self.scheduler.appended(stream, entry, sorted(target.groups))
        if self._appended is not None:
            self._appended.set()
            self._appended = None
        return entry.entry_id

    def entries(self, stream: str | None = None) -> Iterator[tuple[str, StoredEntry]]:
        """Every stored entry (of one stream, or of all in append order)."""
        if stream is None:
            yield from self._log
            return
        target = self._streams.get(stream)
        for entry in target.entries if target is not None else ():
            yield stream, entry

    def length(self, stream: str) -> int:
        target = self._streams.get(stream)
        return len(target.entries) if target is not None else 0

    async def wait_for_append(self, timeout_s: float) -> None:
        """Return when something is appended, or after ``timeout_s``."""
        if self._appended is None:
            self._appended = asyncio.Event()
        appended = self._appended
        try:
            async with asyncio.timeout(timeout_s):
                await appended.wait()
        except TimeoutError:
            return

    # -- groups -------------------------------------------------------------------------------

    def create_group(self, stream: str, group: str, start: str | bytes = "0") -> bool:
        """Create ``group`` on ``stream`` (and the stream); False when it already exists.

        ``start``: "0" reads the whole stream, "$" only what comes next, an entry id what
        comes after it.
        """
        self.check()
        target = self._streams.get(stream)
        if target is None:
            target = self._streams[stream] = _Stream()
        if group in target.groups:
            return False
        raw = start.decode() if isinstance(start, bytes) else start
        if raw == "0":
            cursor = 0
        elif raw == "$":
            cursor = len(target.entries)
        else:
            after = entry_order(raw)
            cursor = sum(1 for entry in target.entries if entry_order(entry.entry_id) <= after)
        target.groups[group] = _Group(cursor)
        if self.scheduler is not None:
            self.scheduler.group_created(stream, group, target.entries[cursor:])
        return True

    def destroy_group(self, stream: str, group: str) -> bool:
        """Delete a group and its pending list (as XGROUP DESTROY); False when there was none."""
        self.check()
        target = self._streams.get(stream)
        if target is None or target.groups.pop(group, None) is None:
            return False
        if self.scheduler is not None:
            self.scheduler.group_destroyed(stream, group)
        return True

    def groups(self, stream: str) -> list[str]:
        target = self._streams.get(stream)
        return sorted(target.groups) if target is not None else []

    def _group(self, stream: str, group: str) -> tuple[_Stream, _Group]:
        self.check()
        target = self._streams.get(stream)
        found = target.groups.get(group) if target is not None else None
        if target is None or found is None:
            raise MissingGroup(stream, group)
        return target, found

    # -- reading ------------------------------------------------------------------------------

    def read_new(self, stream: str, group: str, consumer: str, count: int) -> list[Delivery]:
        """Up to ``count`` entries never delivered to ``group``, now pending on ``consumer``."""
        target, found = self._group(stream, group)
        end = min(len(target.entries), found.cursor + count)
        now = self.clock()
        out: list[Delivery] = []
        for entry in target.entries[found.cursor : end]:
            found.pending[entry.entry_id] = PendingEntry(consumer, 1, now)
            out.append(Delivery(stream, entry.entry_id, entry.data, 1))
        found.cursor = end
        return out

    def deliver(self, stream: str, group: str, consumer: str, entry_id: bytes) -> Delivery:
        """Hand one chosen entry to ``consumer`` (the logical scheduler's reads)."""
        target, found = self._group(stream, group)
        entry = target.entries[target.index[entry_id]]
        found.pending[entry_id] = PendingEntry(consumer, 1, self.clock())
        return Delivery(stream, entry_id, entry.data, 1)

    def read_pending(self, stream: str, group: str, consumer: str, count: int) -> list[Delivery]:
        """Up to ``count`` of ``consumer``'s pending entries, oldest first; each read is a
        delivery (its count goes up), as a history read of XREADGROUP."""
        target, found = self._group(stream, group)
        mine = sorted(
            (entry_id for entry_id, p in found.pending.items() if p.consumer == consumer),
            key=entry_order,
        )[:count]
        now = self.clock()
        out: list[Delivery] = []
        for entry_id in mine:
            pending = found.pending[entry_id]
            pending.deliveries += 1
            pending.since = now
            data = target.entries[target.index[entry_id]].data
            out.append(Delivery(stream, entry_id, data, pending.deliveries))
        return out

    def claim_idle(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[Delivery]:
        """Take over up to ``count`` entries idle for ``min_idle_ms`` (as XAUTOCLAIM)."""
        target, found = self._group(stream, group)
        now = self.clock()
        out: list[Delivery] = []
        for entry_id in sorted(found.pending, key=entry_order):
            if len(out) >= count:
                break
            pending = found.pending[entry_id]
            if (now - pending.since) * 1000 < min_idle_ms:
                continue
            pending.consumer = consumer
            pending.deliveries += 1
            pending.since = now
            data = target.entries[target.index[entry_id]].data
            out.append(Delivery(stream, entry_id, data, pending.deliveries))
        return out

    def claim(
        self, stream: str, group: str, consumer: str, entry_ids: Sequence[bytes], *, count: bool
    ) -> list[PendingEntry]:
        """Make pending entries ``consumer``'s now (as XCLAIM with no minimum idle time);
        ``count`` says whether this is a new delivery. Entries no longer pending are skipped."""
        _, found = self._group(stream, group)
        now = self.clock()
        claimed: list[PendingEntry] = []
        for entry_id in entry_ids:
            pending = found.pending.get(entry_id)
            if pending is None:
                continue
            pending.consumer = consumer
            pending.since = now
            if count:
                pending.deliveries += 1
            claimed.append(pending)
        return claimed

    def pending(self, stream: str, group: str) -> dict[bytes, PendingEntry]:
        """The pending list of a group (a copy)."""
        _, found = self._group(stream, group)
        return dict(found.pending)

    def lag(self, stream: str, group: str) -> int:
        """Entries of ``stream`` not yet delivered to ``group``."""
        target, found = self._group(stream, group)
        if self.scheduler is not None:
            return self.scheduler.queued(stream, group)
        return len(target.entries) - found.cursor

    # -- committing -----------------------------------------------------------------------------

    def apply_commit(self, domain: str, group: str, state_key: str, commit: Commit) -> None:
        """Apply everything of ``commit`` in one synchronous step: all of it or, when it is
        refused (the broker down, a group gone), none of it."""
        self.check()
        for stream in commit.acks:  # refuse before changing anything, as EXEC would
            self._group(stream, group)
        outputs = [
            (self.stream_of_envelope(envelope), envelope.SerializeToString(), envelope)
            for envelope in commit.outputs
        ]
        traces: dict[str, list[bytes]] = {}
        for envelope in commit.indexed:
            traces.setdefault(envelope.trace_id, []).append(envelope.SerializeToString())
        for stream, data, envelope in outputs:
            self.append(stream, data, event_time(envelope))
            traces.setdefault(envelope.trace_id, []).append(data)
        letters = self.dead_letters.setdefault(domain, [])
        for letter in commit.dead:
            self._dead_seq += 1
            letters.append(dataclasses.replace(letter, entry_id=f"{self._dead_seq}-0"))
        for trace_id, items in traces.items():
            self.traces.setdefault(trace_id, []).extend(items)
        marks = self.processed_marks.setdefault(domain, set())
        marks.update(commit.processed)
        if commit.state is not None:
            self.states[state_key] = commit.state
        for stream, ids in commit.acks.items():
            pending = self._streams[stream].groups[group].pending
            for entry_id in ids:
                pending.pop(entry_id, None)
        self.commits += 1
        if self.scheduler is not None and commit.acks:
            self.scheduler.acknowledged(group, commit.acks)
