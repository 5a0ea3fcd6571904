"""TraceService: a whole trace in one read, and live events as they happen."""

from __future__ import annotations

import heapq
import re
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from grpc import aio
from quantum.control.v1 import trace_service_pb2 as pb
from quantum.control.v1 import trace_service_pb2_grpc as pb_grpc
from quantum.events.v1.envelope_pb2 import Envelope

from control_plane.errors import ControlPlaneError, Reason, bad_field
from control_plane.event_streams import EventStreams
from control_plane.live_feed import EventFilter, LiveFeed
from control_plane.stored_events import parse_envelope, stored_event
from runtime.core.keys import Keyspace
from runtime.core.operator_store import OperatorStore
from runtime.core.partitioning import Partitioning
from runtime.core.registry import EventRegistry

_TRACE_ID_RE = re.compile(r"[0-9a-f]{32}")


def check_trace_id(value: str, field_path: str = "trace_id") -> str:
    if not _TRACE_ID_RE.fullmatch(value) or value == "0" * 32:
        raise bad_field(
            field_path, f"must be 32 lowercase hex characters (a W3C trace id), got {value!r}"
        )
    return value


def causal_order(envelopes: Iterable[Envelope]) -> list[Envelope]:
    """Each event once, every cause before its effects, otherwise oldest (smallest id) first.

    Event ids sort by time, but the outputs of one input share that input's time prefix
    (their ids are derived from it), so sorting by id alone could put an effect before its
    cause. This is Kahn's topological sort, taking the smallest ready id each time.
    """
    unique = {e.event_id: e for e in envelopes}  # a redelivery may index an event twice
    children: dict[str, list[str]] = {}
    ready: list[str] = []
    for event_id, envelope in unique.items():
        if envelope.causation_id in unique and envelope.causation_id != event_id:
            children.setdefault(envelope.causation_id, []).append(event_id)
        else:
            ready.append(event_id)
    heapq.heapify(ready)
    ordered: list[Envelope] = []
    while ready:
        event_id = heapq.heappop(ready)
        ordered.append(unique[event_id])
        for child in children.get(event_id, ()):
            heapq.heappush(ready, child)
    if len(ordered) < len(unique):  # a causation cycle (corrupt data): show it anyway, last
        placed = {e.event_id for e in ordered}
        ordered.extend(unique[i] for i in sorted(unique) if i not in placed)
    return ordered


class TraceServicer(pb_grpc.TraceServiceServicer):
    def __init__(
        self,
        store: OperatorStore,
        keyspace: Keyspace,
        registry: EventRegistry,
        feed: LiveFeed,
        *,
        partitioning: Partitioning | None = None,
    ) -> None:
        self._store = store
        self._keyspace = keyspace
        self._streams = EventStreams(keyspace, registry, partitioning)
        self._registry = registry
        self._feed = feed

    async def GetTrace(
        self, request: pb.GetTraceRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetTraceResponse:
        trace_id = check_trace_id(request.trace_id)
        items = await self._store.trace_items(trace_id)
        envelopes = [e for e in (parse_envelope(item) for item in items) if e is not None]
        if not envelopes:
            raise ControlPlaneError(
                grpc.StatusCode.NOT_FOUND,
                f"no events of trace {trace_id} are in the trace index: the id is wrong or "
                "the trace is older than the index's time to live",
                Reason.TRACE_NOT_FOUND,
                {"trace_id": trace_id},
            )
        ordered = causal_order(envelopes)
        return pb.GetTraceResponse(
            trace_id=trace_id,
            events=[
                stored_event(self._streams.of_event(e), "", e, self._registry) for e in ordered
            ],
        )

    async def SubscribeTraces(
        self, request: pb.SubscribeTracesRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.SubscribeTracesResponse]:
        if request.trace_id:
            check_trace_id(request.trace_id)
        known = set(self._registry.names())
        for index, name in enumerate(request.event_types):
            if name not in known:
                raise bad_field(
                    f"event_types[{index}]",
                    f"unknown event type {name!r}; known: {', '.join(sorted(known))}",
                )
        event_filter = EventFilter(
            trace_id=request.trace_id,
            event_types=frozenset(request.event_types),
            domains=frozenset(request.domains),
            symbols=frozenset(request.symbols),
        )
        subscription = await self._feed.subscribe(event_filter)
        try:
            async for event in subscription:
                yield pb.SubscribeTracesResponse(event=event)
        finally:
            await subscription.close()
