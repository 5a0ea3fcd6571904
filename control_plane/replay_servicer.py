"""ReplayService: read stored events, re-deliver them to one domain, manage dead letters."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Protocol

import grpc
import redis.asyncio as aioredis
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from quantum.control.v1 import replay_service_pb2 as pb
from quantum.control.v1 import replay_service_pb2_grpc as pb_grpc
from quantum.events.v1.envelope_pb2 import Envelope

from control_plane.auth import Role, current_principal, require
from control_plane.entry_ids import is_entry_id, next_entry_id
from control_plane.errors import (
    ControlPlaneError,
    FieldViolation,
    Reason,
    bad_field,
    invalid_argument,
)
from control_plane.event_ranges import check_range, count_range, read_range
from control_plane.redis_reads import hmget, xrange
from control_plane.state_repair import StateRepairer
from control_plane.stored_events import stored_event
from runtime.adapters.redis.bus import DEFAULT_MAXLEN, EventBus
from runtime.core.actor import Actor, deliver
from runtime.core.keys import Keyspace
from runtime.core.registry import EventRegistry

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_DOMAIN_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")

# Puts one dead letter back on its stream unless that was done before: atomic, so two
# concurrent redrives of one letter publish it once.
_REDRIVE_LUA = """
local done = redis.call('HGET', KEYS[1], ARGV[1])
if done then return {0, done} end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'envelope', ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], id)
return {1, id}
"""


class EnvelopePublisher(Protocol):
    """Where published replay outputs go (the runtime's EventBus fits)."""

    async def publish_envelopes(self, envelopes: Iterable[Envelope]) -> list[str]: ...


ActorFactory = Callable[[], Actor]


def stream_maxlen(publisher: EnvelopePublisher | None, event_type: str) -> int:
    """The MAXLEN a redrive trims ``event_type``'s stream to: the bus's own, so a redrive
    never trims a stream harder than publishing to it does."""
    if isinstance(publisher, EventBus):
        return publisher.maxlen_of(event_type)  # the bus's per-stream rule, not a copy
    return DEFAULT_MAXLEN


def redriven_key(keyspace: Keyspace, domain: str) -> str:
    """The hash of redriven dead letters of a domain: dead-letter entry id -> new entry id."""
    return keyspace.redriven(domain)


def check_domain_name(value: str, field_path: str = "domain") -> str:
    if not value:
        raise bad_field(field_path, "is required, for example 'risk_safety'")
    if not _DOMAIN_RE.fullmatch(value):
        raise bad_field(field_path, f"is not a domain name (lowercase, digits, '_'): {value!r}")
    return value


def page_size_of(value: int, field_path: str = "page_size") -> int:
    if value < 0:
        raise bad_field(field_path, "must be 0 (the default, 50) or positive")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _timestamp_ms(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def _text(fields: Mapping[bytes, bytes], name: bytes) -> str:
    return fields.get(name, b"").decode("utf-8", "replace")


def _int(fields: Mapping[bytes, bytes], name: bytes) -> int:
    try:
        return int(_text(fields, name) or 0)
    except ValueError:
        return 0


class ReplayServicer(pb_grpc.ReplayServiceServicer):
    def __init__(
        self,
        redis: aioredis.Redis,
        keyspace: Keyspace,
        registry: EventRegistry,
        domain_factories: Mapping[str, ActorFactory],
        publisher: EnvelopePublisher | None,
    ) -> None:
        self._redis = redis
        self._keyspace = keyspace
        self._registry = registry
        self._factories = dict(domain_factories)
        self._publisher = publisher
        self._redrive = redis.register_script(_REDRIVE_LUA)
        self._repairer = StateRepairer(redis, keyspace, registry, self._factories)

    async def ReadEvents(
        self, request: pb.ReadEventsRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ReadEventsResponse]:
        stream_range = check_range(request.range, self._keyspace, self._registry)
        async for entry_id, envelope in read_range(self._redis, stream_range):
            if envelope is None:
                continue
            yield pb.ReadEventsResponse(
                event=stored_event(stream_range.stream, entry_id, envelope, self._registry)
            )

    async def ReplayToDomain(
        self, request: pb.ReplayToDomainRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ReplayToDomainResponse]:
        domain = check_domain_name(request.domain)
        stream_range = check_range(request.range, self._keyspace, self._registry)
        if request.publish:
            require(current_principal(), Role.OPERATOR, "ReplayToDomain with publish=true")
        factory = self._factories.get(domain)
        if factory is None:
            available = ", ".join(sorted(self._factories)) or "none (serve it with quantum run)"
            raise ControlPlaneError(
                grpc.StatusCode.NOT_FOUND,
                f"domain {domain!r} cannot be replayed here; available: {available}",
                Reason.DOMAIN_UNKNOWN,
                {"domain": domain},
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
        total = await count_range(self._redis, stream_range)
        await actor.on_start()
        processed = 0
        try:
            async for entry_id, envelope in read_range(self._redis, stream_range):
                processed += 1
                response = pb.ReplayToDomainResponse(
                    processed=processed, total=max(total, processed)
                )
                if envelope is None:
                    response.input.stream = stream_range.stream
                    response.input.entry_id = entry_id
                    response.error = "the entry does not hold a decodable envelope"
                    yield response
                    continue
                response.input.CopyFrom(
                    stored_event(stream_range.stream, entry_id, envelope, self._registry)
                )
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
        domain = check_domain_name(request.domain)
        page_size = page_size_of(request.page_size)
        start = "-"
        if request.page_token:
            if not is_entry_id(request.page_token, sequence_required=True):
                raise bad_field("page_token", "is not a token from a previous response")
            following = next_entry_id(request.page_token)
            if following is None:  # the largest id there is: nothing can follow it
                return pb.ListDeadLettersResponse()
            start = following
        entries = await xrange(self._redis, self._keyspace.dlq(domain), start, "+", page_size + 1)
        page, more = entries[:page_size], len(entries) > page_size
        ids = [entry_id for entry_id, _ in page]
        redriven = await hmget(self._redis, redriven_key(self._keyspace, domain), ids)
        letters = [
            self._letter(domain, entry_id, fields, done)
            for entry_id, (_, fields), done in zip(ids, page, redriven, strict=True)
        ]
        return pb.ListDeadLettersResponse(
            dead_letters=letters, next_page_token=ids[-1] if more and ids else ""
        )

    @staticmethod
    def _letter(
        domain: str, entry_id: str, fields: Mapping[bytes, bytes], redriven: bytes | None
    ) -> pb.DeadLetter:
        return pb.DeadLetter(
            domain=domain,
            entry_id=entry_id,
            original_stream=_text(fields, b"original_stream"),
            original_entry_id=_text(fields, b"original_entry_id"),
            original_payload=fields.get(b"payload", b""),
            reason=_text(fields, b"reason"),
            error_type=_text(fields, b"error_type"),
            error_message=_text(fields, b"error_message"),
            attempts=_int(fields, b"attempts"),
            failed_at=_timestamp_ms(_int(fields, b"failed_at_ms")),
            redriven_entry_id=redriven.decode() if redriven else "",
        )

    async def RedriveDeadLetters(
        self, request: pb.RedriveDeadLettersRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.RedriveDeadLettersResponse:
        domain = check_domain_name(request.domain)
        violations = [
            FieldViolation(f"entry_ids[{i}]", f"is not a stream entry id: {value!r}")
            for i, value in enumerate(request.entry_ids)
            if not is_entry_id(value, sequence_required=True)
        ]
        if violations:
            raise invalid_argument("some entry ids are malformed", violations)
        letters = await self._letters(domain, list(request.entry_ids))
        response = pb.RedriveDeadLettersResponse()
        prefix = self._keyspace.stream("")
        for entry_id, fields in letters:
            stream = _text(fields, b"original_stream")
            if not stream.startswith(prefix):
                raise ControlPlaneError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"dead letter {entry_id} names original stream {stream!r}, which is not an "
                    f"event stream of this system ({prefix}<type>); it was not redriven",
                    Reason.INVALID_REQUEST,
                    {"entry_id": entry_id},
                )
            done, _new_id = await self._redrive(
                keys=[redriven_key(self._keyspace, domain), stream],
                args=[
                    entry_id,
                    fields.get(b"payload", b""),
                    stream_maxlen(self._publisher, stream.removeprefix(prefix)),
                ],
            )
            if int(done):
                response.redriven += 1
                response.entry_ids.append(entry_id)
            else:
                response.already_redriven += 1
        return response

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

    async def _letters(
        self, domain: str, entry_ids: list[str]
    ) -> list[tuple[str, Mapping[bytes, bytes]]]:
        key = self._keyspace.dlq(domain)
        if not entry_ids:
            found: list[tuple[str, Mapping[bytes, bytes]]] = []
            start = "-"
            while True:
                entries = await xrange(self._redis, key, start, "+", 1000)
                found.extend(entries)
                if len(entries) < 1000:
                    return found
                start = "(" + entries[-1][0]
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.xrange(key, min=entry_id, max=entry_id, count=1)
            replies = await pipe.execute()
        missing = [
            i
            for i, (entry_id, reply) in enumerate(zip(entry_ids, replies, strict=True))
            if not reply
        ]
        if missing:
            raise ControlPlaneError(
                grpc.StatusCode.NOT_FOUND,
                f"no dead letter {', '.join(entry_ids[i] for i in missing)} in {key}; list "
                "them with ListDeadLetters",
                Reason.DEAD_LETTER_NOT_FOUND,
                {"domain": domain},
            )
        return [(entry_id, reply[0][1]) for entry_id, reply in zip(entry_ids, replies, strict=True)]
