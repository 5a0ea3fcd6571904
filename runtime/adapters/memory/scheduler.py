"""Logical time: which group gets which entry next, in event-time and causal order.

Every (entry, group) pair waiting for delivery sits in one priority queue keyed by the
entry's event time, then its append number, then the group's name. The scheduler hands out
one grant at a time — the head of the queue, with the entries right behind it that have the
same event time and go to the same group — and grants nothing more until every entry of that
grant is acknowledged (handled, skipped or dead-lettered, in one commit). So the domains run
one at a time, and:

- causal order: an output is appended by the commit of its cause, so it is queued after it;
- event-time order: a handler's outputs carry its input's event time, so everything a tick
  causes (signal, decision, order, fill, position, PnL) is delivered before anything later —
  risk_safety decides on a signal with the portfolio as of that signal's event time;
- batching keeps the order: outputs of the grant's entries enter the queue behind every
  entry of the same time that is already there, so handing those entries over together
  changes nothing a handler can observe;
- the same input yields the same sequence of deliveries, whatever the wall clock does.

A source (``feed``) is read lazily: its next envelope is appended once logical time has
reached its event time, so a long recording is never held in memory at once.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Iterable, Iterator, Sequence

from quantum.events.v1.envelope_pb2 import Envelope

from runtime.adapters.memory.broker import EventTime, MemoryBroker, StoredEntry, event_time

_Queued = tuple[int, int, int, str, str, bytes]  # seconds, nanos, seq, group, stream, entry id


class LogicalScheduler:
    """Grants entries to groups one batch at a time, in (event time, append order)."""

    def __init__(self, broker: MemoryBroker, *, max_batch: int = 500) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1; got {max_batch}")
        self.broker = broker
        self.max_batch = max_batch
        self._queue: list[_Queued] = []
        self._queued: dict[tuple[str, str], int] = {}  # (stream, group) -> entries queued
        self._granted: dict[str, list[tuple[str, bytes]]] = {}  # group -> not yet fetched
        self._in_flight: set[tuple[str, str, bytes]] = set()  # (group, stream, id) unacked
        self._wakeups: dict[str, asyncio.Event] = {}
        self._source: Iterator[Envelope] | None = None
        self._next: Envelope | None = None
        self._closed = False
        self._pulling = False
        self.now: EventTime = (0, 0)  # event time of the latest grant
        self.grants = 0
        self.finished = asyncio.Event()  # the source ran dry and everything was delivered

    # -- what the broker tells it ---------------------------------------------------------

    def appended(self, stream: str, entry: StoredEntry, groups: Sequence[str]) -> None:
        for group in groups:
            self._push(stream, group, entry)
        self._advance()

    def group_created(self, stream: str, group: str, backlog: Iterable[StoredEntry]) -> None:
        for entry in backlog:
            self._push(stream, group, entry)
        self._advance()

    def group_destroyed(self, stream: str, group: str) -> None:
        self._queue = [item for item in self._queue if not (item[3] == group and item[4] == stream)]
        heapq.heapify(self._queue)
        self._queued.pop((stream, group), None)
        self._granted[group] = [g for g in self._granted.get(group, []) if g[0] != stream]
        self._in_flight = {f for f in self._in_flight if not (f[0] == group and f[1] == stream)}
        self._advance()

    def acknowledged(self, group: str, acks: dict[str, list[bytes]]) -> None:
        in_flight = self._in_flight
        for stream, ids in acks.items():
            for entry_id in ids:
                in_flight.discard((group, stream, entry_id))
        self._advance()

    # -- what subscriptions ask -------------------------------------------------------------

    def take(self, group: str, count: int) -> list[tuple[str, bytes]]:
        """The entries granted to ``group`` and not yet fetched (at most ``count``)."""
        granted = self._granted.get(group)
        if not granted:
            return []
        taken, self._granted[group] = granted[:count], granted[count:]
        return taken

    async def wait(self, group: str, timeout_s: float) -> None:
        """Return when ``group`` is granted something (or the scheduler closes), or after
        ``timeout_s``. Always lets the event loop run other tasks first: a consumer that
        finds work at once (or a closed scheduler) must not starve the rest (``stop()``)."""
        if self._granted.get(group) or self._closed:
            await asyncio.sleep(0)
            return
        event = self._wakeups.get(group)
        if event is None:
            event = self._wakeups[group] = asyncio.Event()
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
        except TimeoutError:
            return

    def queued(self, stream: str, group: str) -> int:
        return self._queued.get((stream, group), 0)

    # -- the source and the end -------------------------------------------------------------

    def feed(self, source: Iterable[Envelope]) -> None:
        """Append ``source``'s envelopes (in its order) as logical time reaches each one's
        event time; ``finished`` is set once it is exhausted and everything is delivered."""
        if self._source is not None:
            raise RuntimeError("the scheduler already has a source; give it one feed only")
        self._source = iter(source)
        self._next = next(self._source, None)
        self._advance()

    @property
    def idle(self) -> bool:
        """Nothing queued, granted or in flight, and no source left to read."""
        return (
            not self._queue
            and not self._in_flight
            and not any(self._granted.values())
            and self._next is None
        )

    def close(self) -> None:
        """Wake every waiting fetch (they return empty): the runners can stop."""
        self._closed = True
        for event in self._wakeups.values():
            event.set()

    # -- internals --------------------------------------------------------------------------

    def _push(self, stream: str, group: str, entry: StoredEntry) -> None:
        seconds, nanos = entry.at
        heapq.heappush(self._queue, (seconds, nanos, entry.seq, group, stream, entry.entry_id))
        key = (stream, group)
        self._queued[key] = self._queued.get(key, 0) + 1

    def _pull_source(self) -> None:
        """Append the source's envelopes whose time logical time has reached."""
        while self._next is not None and (
            not self._queue or event_time(self._next) <= self._queue[0][:2]
        ):
            envelope, self._next = self._next, None
            assert self._source is not None
            self.broker.append(  # re-enters _advance: a no-op while pulling
                self.broker.stream_of_envelope(envelope),
                envelope.SerializeToString(),
                event_time(envelope),
            )
            self._next = next(self._source, None)

    def _advance(self) -> None:
        if self._in_flight or self._pulling:
            return
        self._pulling = True
        try:
            self._pull_source()
        finally:
            self._pulling = False
        queue = self._queue
        if not queue:
            if self._next is None and self._source is not None:
                self.finished.set()
            return
        seconds, nanos, _, group, stream, entry_id = heapq.heappop(queue)
        batch = [(stream, entry_id)]
        while (
            queue
            and len(batch) < self.max_batch
            and queue[0][3] == group
            and queue[0][:2] == (seconds, nanos)
        ):
            _, _, _, _, next_stream, next_id = heapq.heappop(queue)
            batch.append((next_stream, next_id))
        for granted_stream, granted_id in batch:
            key = (granted_stream, group)
            self._queued[key] -= 1
            self._in_flight.add((group, granted_stream, granted_id))
        self._granted.setdefault(group, []).extend(batch)
        self.now = (seconds, nanos)
        self.grants += 1
        event = self._wakeups.pop(group, None)
        if event is not None:
            event.set()
