"""ReplayService: read stored events, re-deliver them to one domain, manage dead letters."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Protocol

import grpc
from grpc import aio
from quantum.control.v1 import replay_service_pb2 as pb
from quantum.control.v1 import replay_service_pb2_grpc as pb_grpc
from quantum.events.v1.envelope_pb2 import Envelope

from control_plane.auth import Role, current_principal, require
from control_plane.dead_letter_desk import (
    DeadLetterDesk,
    KnownDomains,
    page_size_of,
    unknown_domain,
)
from control_plane.errors import (
    ControlPlaneError,
    Reason,
    bad_field,
)
from control_plane.event_ranges import check_range, count_range, read_range
from control_plane.event_streams import EventStreams
from control_plane.state_repair import StateRepairer
from control_plane.stored_events import stored_event
from runtime.adapters.redis.bus import DEFAULT_MAXLEN
from runtime.adapters.redis.publishers import maxlen_of
from runtime.core.actor import Actor, deliver
from runtime.core.operator_store import OperatorStore

_DOMAIN_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")


class EnvelopePublisher(Protocol):
    """Where published replay outputs go (the runtime's EventBus fits)."""

    async def publish_envelopes(self, envelopes: Iterable[Envelope]) -> list[str]: ...


ActorFactory = Callable[[], Actor]


def stream_maxlen(publisher: EnvelopePublisher | None, topic: str) -> int:
    """The MAXLEN a redrive trims ``topic``'s stream to: the bus's own, so a redrive
    never trims a stream harder than publishing to it does."""
    maxlen = maxlen_of(publisher, topic)  # the bus's per-stream rule, not a copy
    return DEFAULT_MAXLEN if maxlen is None else maxlen


def check_domain_name(value: str, field_path: str = "domain") -> str:
    if not value:
        raise bad_field(field_path, "is required, for example 'risk_safety'")
    if not _DOMAIN_RE.fullmatch(value):
        raise bad_field(field_path, f"is not a domain name (lowercase, digits, '_'): {value!r}")
    return value


class ReplayServicer(pb_grpc.ReplayServiceServicer):
    def __init__(
        self,
        store: OperatorStore,
        streams: EventStreams,
        domain_factories: Mapping[str, ActorFactory],
        publisher: EnvelopePublisher | None,
        known_domains: KnownDomains | None = None,
    ) -> None:
        self._store = store
        self._streams = streams
        self._registry = streams.registry
        self._factories = dict(domain_factories)
        self._publisher = publisher
        self._repairer = StateRepairer(store, streams, self._factories)
        self._dead_letters = DeadLetterDesk(
            store,
            streams,
            known_domains or self._hosted_domains,
            lambda topic: stream_maxlen(publisher, topic),
        )

    async def _hosted_domains(self) -> list[str]:
        return sorted(self._factories)

    async def ReadEvents(
        self, request: pb.ReadEventsRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ReadEventsResponse]:
        stream_range = check_range(request.range, self._streams)
        async for stream, entry_id, envelope in read_range(self._store, stream_range):
            if envelope is None:
                continue
            yield pb.ReadEventsResponse(
                event=stored_event(stream, entry_id, envelope, self._registry)
            )

    async def ReplayToDomain(
        self, request: pb.ReplayToDomainRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ReplayToDomainResponse]:
        domain = check_domain_name(request.domain)
        stream_range = check_range(request.range, self._streams)
        if request.publish:
            require(current_principal(), Role.OPERATOR, "ReplayToDomain with publish=true")
        factory = self._factories.get(domain)
        if factory is None:  # replay needs the domain's code in this process
            raise unknown_domain(
                domain, sorted(self._factories), " that this control plane can replay"
            )
        if request.publish and self._publisher is None:
            raise ControlPlaneError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this control plane has no event bus to publish replay outputs through",
                Reason.PUBLISHER_UNAVAILABLE,
            )
        actor = factory()
        if not isinstance(actor, Actor):
            raise ControlPlaneError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"domain {domain!r} is a feed, not an actor: it consumes no events to replay",
                Reason.DOMAIN_UNKNOWN,
                {"domain": domain},
            )
        total = await count_range(self._store, stream_range)
        await actor.on_start()
        processed = 0
        try:
            async for stream, entry_id, envelope in read_range(self._store, stream_range):
                processed += 1
                response = pb.ReplayToDomainResponse(
                    processed=processed, total=max(total, processed)
                )
                if envelope is None:
                    response.input.stream = stream
                    response.input.entry_id = entry_id
                    response.error = "the entry does not hold a decodable envelope"
                    yield response
                    continue
                response.input.CopyFrom(stored_event(stream, entry_id, envelope, self._registry))
                try:
                    outputs = await deliver(actor, envelope, self._registry)
                except Exception as exc:  # the handler's failure is reported, the replay goes on
                    response.error = f"{type(exc).__name__}: {exc}"
                    yield response
                    continue
                response.outputs.extend(outputs)
                if request.publish and outputs:
                    assert self._publisher is not None
                    await self._publisher.publish_envelopes(outputs)
                    response.published = True
                yield response
        finally:
            await actor.on_stop()

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ListDeadLettersResponse:
        check_domain_name(request.domain)
        return await self._dead_letters.list_page(request)

    async def RedriveDeadLetters(
        self, request: pb.RedriveDeadLettersRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.RedriveDeadLettersResponse:
        check_domain_name(request.domain)
        return await self._dead_letters.redrive(request)

    async def RepairDomainState(
        self, request: pb.RepairDomainStateRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.RepairDomainStateResponse:
        check_domain_name(request.domain)
        principal = current_principal()
        require(principal, Role.OPERATOR, "RepairDomainState")
        return await self._repairer.repair(request, principal.changed_by)

    async def ListStateRepairs(
        self, request: pb.ListStateRepairsRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ListStateRepairsResponse:
        if request.domain:
            check_domain_name(request.domain)
        repairs = await self._repairer.history(request.domain, page_size_of(request.page_size))
        return pb.ListStateRepairsResponse(repairs=repairs)

    async def PurgeDeadLetters(
        self, request: pb.PurgeDeadLettersRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.PurgeDeadLettersResponse:
        check_domain_name(request.domain)
        return await self._dead_letters.purge(request)
