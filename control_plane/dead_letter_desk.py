"""Dead letters for operators: list, redrive and purge, one domain at a time.

A domain named in a request must be one the system knows (a consumer group of its event
streams, or a domain this process hosts); any other name is answered DOMAIN_UNKNOWN with the
list of known ones, the same way for every call, instead of an empty page. A purge deletes
letters for good, so it needs the operator role (``auth``) and leaves an audit entry.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from quantum.control.v1 import replay_service_pb2 as pb

from control_plane.auth import current_principal
from control_plane.entry_ids import is_entry_id, next_entry_id
from control_plane.errors import (
    ControlPlaneError,
    FieldViolation,
    Reason,
    bad_field,
    invalid_argument,
)
from control_plane.event_streams import EventStreams
from runtime.core.logs import get_logger
from runtime.core.operator_store import Entry, OperatorStore

log = get_logger("control_plane.dead_letters")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
AUDIT_MAXLEN = 10_000

KnownDomains = Callable[[], Awaitable[Sequence[str]]]
StreamMaxlen = Callable[[str], int]


def page_size_of(value: int, field_path: str = "page_size") -> int:
    if value < 0:
        raise bad_field(field_path, "must be 0 (the default, 50) or positive")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def unknown_domain(domain: str, known: Sequence[str], where: str = "") -> ControlPlaneError:
    """NOT_FOUND / DOMAIN_UNKNOWN naming the domains there are."""
    listed = ", ".join(known) or "none yet (start them with quantum run)"
    return ControlPlaneError(
        grpc.StatusCode.NOT_FOUND,
        f"no domain {domain!r}{where}; known: {listed}",
        Reason.DOMAIN_UNKNOWN,
        {"domain": domain, "known_domains": ",".join(known)},
    )


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


def _check_entry_ids(entry_ids: Sequence[str]) -> None:
    violations = [
        FieldViolation(f"entry_ids[{i}]", f"is not a stream entry id: {value!r}")
        for i, value in enumerate(entry_ids)
        if not is_entry_id(value, sequence_required=True)
    ]
    if violations:
        raise invalid_argument("some entry ids are malformed", violations)


class DeadLetterDesk:
    """The dead-letter calls of ReplayService."""

    def __init__(
        self,
        store: OperatorStore,
        streams: EventStreams,
        known_domains: KnownDomains,
        stream_maxlen: StreamMaxlen,
    ) -> None:
        self._store = store
        self._streams = streams
        self._keyspace = streams.keyspace
        self._known_domains = known_domains
        self._stream_maxlen = stream_maxlen

    async def known_domain(self, domain: str) -> str:
        """``domain`` when the system knows it; DOMAIN_UNKNOWN with the list otherwise."""
        if not domain:
            raise bad_field("domain", "is required, for example 'risk_safety'")
        known = list(await self._known_domains())
        if domain not in known:
            raise unknown_domain(domain, known)
        return domain

    async def list_page(self, request: pb.ListDeadLettersRequest) -> pb.ListDeadLettersResponse:
        page_size = page_size_of(request.page_size)
        start = "-"
        if request.page_token:
            if not is_entry_id(request.page_token, sequence_required=True):
                raise bad_field("page_token", "is not a token from a previous response")
            following = next_entry_id(request.page_token)
            if following is None:  # the largest id there is: nothing can follow it
                return pb.ListDeadLettersResponse()
            start = following
        domain = await self.known_domain(request.domain)
        entries = await self._store.range(self._keyspace.dlq(domain), start, "+", page_size + 1)
        page, more = entries[:page_size], len(entries) > page_size
        ids = [entry_id for entry_id, _ in page]
        redriven = await self._store.redriven(domain, ids)
        letters = [
            _letter(domain, entry_id, fields, done)
            for entry_id, (_, fields), done in zip(ids, page, redriven, strict=True)
        ]
        return pb.ListDeadLettersResponse(
            dead_letters=letters, next_page_token=ids[-1] if more and ids else ""
        )

    async def redrive(self, request: pb.RedriveDeadLettersRequest) -> pb.RedriveDeadLettersResponse:
        _check_entry_ids(request.entry_ids)
        domain = await self.known_domain(request.domain)
        letters = await self._letters(domain, list(request.entry_ids))
        response = pb.RedriveDeadLettersResponse()
        for entry_id, fields in letters:
            stream = _text(fields, b"original_stream")
            topic = self._streams.topic_of(stream)
            if topic is None:
                example = self._keyspace.stream("<type>")
                raise ControlPlaneError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"dead letter {entry_id} names original stream {stream!r}, which is not an "
                    f"event stream of this system ({example}); it was not redriven",
                    Reason.INVALID_REQUEST,
                    {"entry_id": entry_id},
                )
            if await self._store.redrive(
                domain,
                entry_id,
                stream,
                fields.get(b"payload", b""),
                self._stream_maxlen(topic),
            ):
                response.redriven += 1
                response.entry_ids.append(entry_id)
            else:
                response.already_redriven += 1
        return response

    async def purge(self, request: pb.PurgeDeadLettersRequest) -> pb.PurgeDeadLettersResponse:
        if request.all and request.entry_ids:
            raise bad_field("all", "give entry_ids or all, not both")
        if not request.all and not request.entry_ids:
            raise bad_field(
                "entry_ids", "name the letters to delete, or set all to delete every one"
            )
        _check_entry_ids(request.entry_ids)
        domain = await self.known_domain(request.domain)
        ids = [entry_id for entry_id, _ in await self._letters(domain, list(request.entry_ids))]
        principal = current_principal()
        await self._store.purge_dead_letters(
            domain,
            ids,
            {
                "action": "dead_letters.purge",
                "by": principal.changed_by,
                "domain": domain,
                "count": str(len(ids)),
                "entry_ids": ",".join(ids),
                "at_ms": str(int(time.time() * 1000)),
            },
            AUDIT_MAXLEN,
        )
        log.info("dead_letters_purged", domain=domain, count=len(ids), by=principal.changed_by)
        return pb.PurgeDeadLettersResponse(purged=len(ids), entry_ids=ids)

    async def _letters(self, domain: str, entry_ids: list[str]) -> list[Entry]:
        """The named letters (all of the domain's when none are named); NOT_FOUND, naming
        them, when some are missing."""
        key = self._keyspace.dlq(domain)
        if not entry_ids:
            found: list[Entry] = []
            start = "-"
            while True:
                entries = await self._store.range(key, start, "+", 1000)
                found.extend(entries)
                if len(entries) < 1000:
                    return found
                start = "(" + entries[-1][0]
        replies = await self._store.entries_by_id(key, entry_ids)
        missing = [
            entry_id for entry_id, reply in zip(entry_ids, replies, strict=True) if reply is None
        ]
        if missing:
            raise ControlPlaneError(
                grpc.StatusCode.NOT_FOUND,
                f"no dead letter {', '.join(missing)} in {domain}'s dead letters; list them "
                f"with: quantumctl dlq list {domain}",
                Reason.DEAD_LETTER_NOT_FOUND,
                {"domain": domain, "entry_ids": ",".join(missing)},
            )
        return [
            (entry_id, fields)
            for entry_id, fields in zip(entry_ids, replies, strict=True)
            if fields is not None
        ]
