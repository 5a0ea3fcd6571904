"""One reader of every event stream (each partition of each type), fanned out to live
subscribers through bounded queues.

The runtime never waits for a subscriber: a single task follows the streams with XREAD and
hands each matching event to each subscriber with ``put_nowait``. A subscriber whose queue
is full is cut off (its stream ends with RESOURCE_EXHAUSTED) instead of holding anything up.
The reader runs only while someone subscribes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from quantum.control.v1.stored_event_pb2 import StoredEvent

from control_plane.errors import ControlPlaneError, Reason
from control_plane.event_streams import EventStreams
from control_plane.runtime_errors import BrokerUnreachable
from control_plane.stored_events import ENVELOPE_FIELD, parse_envelope, stored_event
from runtime.core.keys import Keyspace
from runtime.core.logs import get_logger
from runtime.core.operator_store import OperatorStore
from runtime.core.partitioning import Partitioning
from runtime.core.registry import EventRegistry

log = get_logger("control_plane.live_feed")

DEFAULT_QUEUE_SIZE = 1024
# How long a cut-off subscriber's handler may stay blocked writing before it is cancelled.
CUT_OFF_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which live events a subscriber wants; an empty part matches everything."""

    trace_id: str = ""
    event_types: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    symbols: frozenset[str] = frozenset()

    def matches(self, event: StoredEvent) -> bool:
        envelope = event.envelope
        return (
            (not self.trace_id or envelope.trace_id == self.trace_id)
            and (not self.event_types or envelope.event_type in self.event_types)
            and (not self.domains or envelope.producer in self.domains)
            and (not self.symbols or envelope.partition_key in self.symbols)
        )


@dataclass(eq=False)
class Subscription:
    """One subscriber's queue; iterate it to receive events."""

    feed: LiveFeed
    filter: EventFilter
    queue: asyncio.Queue[StoredEvent | None]
    cut_off: bool = False
    # The task serving this subscriber (the RPC's): cancelled when it is cut off and does not
    # end by itself, because a subscriber that stops reading leaves it blocked in a write.
    handler: asyncio.Task[object] | None = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)

    def offer(self, event: StoredEvent) -> None:
        """Queue an event without waiting; a full queue cuts the subscriber off."""
        if self.cut_off:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self._cut_off()

    def _cut_off(self) -> None:
        self.cut_off = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)  # a handler still reading ends with RESOURCE_EXHAUSTED
        self.feed.forget(self)  # no more events are decoded or queued for it
        handler = self.handler
        if handler is not None and not handler.done():
            # A handler blocked in a write never reads the None above: bound that write.
            asyncio.get_running_loop().call_later(self.feed.cut_off_grace_s, handler.cancel)

    async def __aiter__(self) -> AsyncIterator[StoredEvent]:
        try:
            while True:
                event = await self.queue.get()
                if event is None:
                    raise ControlPlaneError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the subscriber fell {self.queue.maxsize} events behind the live "
                        "stream and was cut off; narrow the filters or read faster, then "
                        "subscribe again",
                        Reason.SUBSCRIBER_TOO_SLOW,
                        {"queue_size": str(self.queue.maxsize)},
                    )
                yield event
        finally:
            await self.close()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.feed.unsubscribe(self)


class LiveFeed:
    """Follows the streams of every registered event type while anyone subscribes."""

    def __init__(
        self,
        store: OperatorStore,
        keyspace: Keyspace,
        registry: EventRegistry,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        block_ms: int = 500,
        batch: int = 512,
        cut_off_grace_s: float = CUT_OFF_GRACE_S,
        partitioning: Partitioning | None = None,
    ) -> None:
        self.cut_off_grace_s = cut_off_grace_s
        self._store = store
        self._streams = EventStreams(keyspace, registry, partitioning)
        self._registry = registry
        self._queue_size = queue_size
        self._block_ms = block_ms
        # One XREAD round never brings more than half a queue, so a subscriber that keeps
        # up is not cut off by the size of a single round.
        self._batch = max(1, min(batch, queue_size // 2))
        self._subscribers: set[Subscription] = set()
        self._reader: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def following(self) -> bool:
        """True once the reader has fixed its start: later events reach every subscriber."""
        return bool(self._subscribers) and self._started.is_set()

    async def subscribe(self, event_filter: EventFilter) -> Subscription:
        """A new subscription that sees events added from now on."""
        subscription = Subscription(
            self, event_filter, asyncio.Queue(self._queue_size), handler=asyncio.current_task()
        )
        self._subscribers.add(subscription)
        if self._reader is None or self._reader.done():
            self._started = asyncio.Event()
            self._reader = asyncio.create_task(self._read(), name="control-plane-live-feed")
        try:
            await self._started.wait()
        except BaseException:  # cancelled while waiting: the caller never gets it to close
            await self.unsubscribe(subscription)
            raise
        return subscription

    def forget(self, subscription: Subscription) -> None:
        """Stop dispatching to ``subscription`` (the reader stops when nobody is left)."""
        self._subscribers.discard(subscription)

    async def unsubscribe(self, subscription: Subscription) -> None:
        self.forget(subscription)
        if not self._subscribers:
            await self.stop()

    async def stop(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(self) -> None:
        # A reader that died would leave every subscriber waiting forever: on an unexpected
        # error, log it and follow again from the streams' current ends.
        while self._subscribers:
            try:
                await self._follow()
            except Exception as exc:
                log.error("live_feed_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
                self._started.set()
                await asyncio.sleep(1.0)

    async def _follow(self) -> None:
        streams = self._streams.registered()  # every partition of every type
        # "$" would race with events added between subscribe() and the first XREAD: start
        # from each stream's current last id instead.
        last_ids = await self._last_ids(streams)
        self._started.set()
        while self._subscribers:
            try:
                reply = await self._store.read_after(last_ids, self._batch, self._block_ms)
            except BrokerUnreachable as exc:
                log.warning("live_feed_broker_unavailable", error=str(exc))
                await asyncio.sleep(0.5)
                continue
            for stream, entries in reply:
                for entry_id, fields in entries:
                    last_ids[stream] = entry_id
                    self._dispatch(stream, entry_id, fields.get(ENVELOPE_FIELD))

    async def _last_ids(self, streams: list[str]) -> dict[str, str]:
        while True:
            try:
                return await self._store.last_entry_ids(streams)
            except BrokerUnreachable as exc:
                log.warning("live_feed_broker_unavailable", error=str(exc))
                self._started.set()
                await asyncio.sleep(0.5)

    def _dispatch(self, stream: str, entry_id: str, data: bytes | None) -> None:
        envelope = parse_envelope(data) if data is not None else None
        if envelope is None:
            return
        event: StoredEvent | None = None
        for subscription in list(self._subscribers):
            if subscription.cut_off:
                continue
            if event is None:
                # Decode the payload once, and only when someone may want it.
                probe = StoredEvent(stream=stream, entry_id=entry_id, envelope=envelope)
                if not subscription.filter.matches(probe):
                    continue
                event = stored_event(stream, entry_id, envelope, self._registry)
            elif not subscription.filter.matches(event):
                continue
            subscription.offer(event)
