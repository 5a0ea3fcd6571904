"""Every JetStream name one system uses, in one place: streams, subjects, the KV bucket and
its keys, and consumer names, all derived from the keyspace's namespace.

NATS refuses some characters where others are fine: subjects split on ``.`` and give ``*``
and ``>`` a meaning; stream, consumer and bucket names allow even less. ``token`` turns any
text (a namespace, a topic such as ``market.tick:3``, a group) into one safe token, and is
injective, so two topics never share a subject.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runtime.core.keys import Keyspace

_SAFE = re.compile(r"[A-Za-z0-9-]")
# Joins the parts of a consumer name. An escape's '_' is followed by '_', 'u' or a hex digit,
# never '-', so a name decoded left to right splits back unambiguously (``untoken_parts``);
# a plain ``str.split`` would not: token("_-") is "__-".
SEPARATOR = "_-"


def token(text: str) -> str:
    """``text`` as one token of letters, digits, '-' and '_': '_' doubles, any other
    character becomes '_' and its code point in hex ('.' -> '_2e', past U+00FF '_u' and six
    digits)."""
    out: list[str] = []
    for char in text:
        if _SAFE.match(char):
            out.append(char)
        elif char == "_":
            out.append("__")
        else:
            code = ord(char)
            out.append(f"_{code:02x}" if code <= 0xFF else f"_u{code:06x}")
    return "".join(out)


@dataclass(frozen=True, slots=True)
class JetStreamNames:
    """The names of one namespace's streams, subjects, bucket and keys."""

    keyspace: Keyspace

    @property
    def _ns(self) -> str:
        return token(self.keyspace.namespace)

    @property
    def events_stream(self) -> str:
        """The stream holding every topic's events."""
        return f"{self._ns}{SEPARATOR}events"

    @property
    def dlq_stream(self) -> str:
        """The stream holding every domain's dead letters."""
        return f"{self._ns}{SEPARATOR}dlq"

    @property
    def trace_stream(self) -> str:
        """The stream of the trace index (a subject per trace id)."""
        return f"{self._ns}{SEPARATOR}traces"

    @property
    def bucket(self) -> str:
        """The KV bucket of partition records, leases and heartbeats."""
        return f"{self._ns}{SEPARATOR}kv"

    @property
    def policy_bucket(self) -> str:
        """The KV bucket of the policy (one key, its history the policy's)."""
        return f"{self._ns}{SEPARATOR}policy"

    @property
    def ops_stream(self) -> str:
        """The stream of operators' records: the audit log and the state repairs."""
        return f"{self._ns}{SEPARATOR}ops"

    @property
    def ops_subjects(self) -> str:
        return f"{self._ns}.ops.>"

    def ops(self, name: str) -> str:
        """The subject of one operators' log (``audit``, ``repairs``)."""
        return f"{self._ns}.ops.{token(name)}"

    def stream_of(self, subject: str) -> str:
        """The stream that holds ``subject`` (one of this namespace's subjects)."""
        kind = subject.removeprefix(f"{self._ns}.").partition(".")[0]
        stream = {
            "ev": self.events_stream,
            "dlq": self.dlq_stream,
            "trace": self.trace_stream,
            "ops": self.ops_stream,
        }.get(kind)
        if stream is None or not subject.startswith(f"{self._ns}."):
            raise ValueError(f"{subject!r} is not a subject of namespace {self.keyspace.namespace}")
        return stream

    @property
    def events_subjects(self) -> str:
        return f"{self._ns}.ev.>"

    @property
    def dlq_subjects(self) -> str:
        return f"{self._ns}.dlq.>"

    def subject(self, topic: str) -> str:
        """The subject of one topic (a partition of an event type's log)."""
        return f"{self._ns}.ev.{token(topic)}"

    @property
    def trace_subjects(self) -> str:
        return f"{self._ns}.trace.>"

    def trace(self, trace_id: str) -> str:
        """The subject of one trace's events in the trace index."""
        return f"{self._ns}.trace.{token(trace_id)}"

    def dlq(self, domain: str) -> str:
        """The subject of one domain's dead letters."""
        return f"{self._ns}.dlq.{token(domain)}"

    def record_key(self, group: str) -> str:
        """The KV key of a domain partition's record (state, marks, positions)."""
        return f"record.{token(group)}"

    def lease_key(self, group: str) -> str:
        """The KV key of a domain partition's ownership lease."""
        return f"lease.{token(group)}"

    def redrive_key(self, domain: str, entry_id: str) -> str:
        """The KV key noting that one of a domain's dead letters was redriven (its value the
        entry id the redrive appended)."""
        return f"redriven.{token(domain)}.{token(entry_id)}"

    def heartbeat_key(self, domain: str, consumer: str) -> str:
        return f"beat.{token(domain)}.{token(consumer)}"

    @staticmethod
    def consumer(group: str, subject: str, lease_token: int, generation: int) -> str:
        """The durable consumer of one owner's positioning on one subject: a new owner (or a
        new positioning) gets a new name, so a stale owner can never pull its successor's
        entries."""
        return SEPARATOR.join((token(group), token(subject), f"t{lease_token}", f"g{generation}"))


def untoken_parts(text: str) -> list[str] | None:
    """The texts ``token`` made of ``text``'s ``SEPARATOR``-joined parts, decoded left to
    right (so a '_' that ends an escaped "__" never starts a separator); None when ``text``
    is not such a join."""
    parts: list[str] = []
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char != "_":
            if not _SAFE.match(char):
                return None
            out.append(char)
            i += 1
            continue
        mark = text[i + 1 : i + 2]
        if mark == "_":
            out.append("_")
            i += 2
        elif mark == "-":
            parts.append("".join(out))
            out = []
            i += 2
        else:
            width = 7 if mark == "u" else 2
            digits = text[i + 2 : i + 1 + width] if mark == "u" else text[i + 1 : i + 3]
            if len(digits) != (6 if mark == "u" else 2) or not _HEX.fullmatch(digits):
                return None
            out.append(chr(int(digits, 16)))
            i += 1 + width
    parts.append("".join(out))
    return parts


_HEX = re.compile(r"[0-9a-f]+")


def split_consumer(name: str) -> tuple[str, str, int, int] | None:
    """The (group, subject, lease token, generation) ``JetStreamNames.consumer`` made
    ``name`` of; None for a consumer named otherwise (a read's, a KV watcher's)."""
    parts = untoken_parts(name)
    if parts is None or len(parts) != 4:
        return None
    group, subject, lease, generation = parts
    if not (lease[:1] == "t" and lease[1:].isdigit() and generation[:1] == "g"):
        return None
    if not generation[1:].isdigit():
        return None
    return group, subject, int(lease[1:]), int(generation[1:])
