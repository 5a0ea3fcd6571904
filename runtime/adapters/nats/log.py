"""``EventLog`` on JetStream: each topic a subject of the namespace's events stream, each
envelope published with its event id as ``Nats-Msg-Id``.

The message id is what makes a retried publish store once: a batch resent after a lost
reply, or a commit redone after a crash (whose outputs carry ids derived from their inputs),
is answered with the original's sequence instead of a second copy, within the stream's
duplicate window.

Entry ids read ``<ms>-<seq>`` like a Redis stream's: the stream sequence (one stream holds
every topic, so sequences order all of them) and the time the server stored the message.
``append`` learns only the sequence from JetStream's reply; its ids carry this process's
clock instead, as close as one machine's clocks are.
"""

from __future__ import annotations

from collections.abc import Sequence

from runtime.adapters.nats.connection import Connection, PublishItem
from runtime.adapters.nats.errors import is_transient
from runtime.adapters.nats.retention import SubjectRetention
from runtime.core.dead_letters import now_ms
from runtime.core.envelope import EnvelopeError, decode_envelope


def entry_id(ms: int, seq: int) -> str:
    return f"{ms}-{seq}"


def seq_of(entry: bytes | str) -> int:
    """The stream sequence inside an entry id."""
    raw = entry.decode() if isinstance(entry, bytes) else entry
    return int(raw.rpartition("-")[2])


def event_id_of(data: bytes) -> str:
    """The event id of serialized envelope bytes ("" when they hold none). The envelope's
    first field is its id, so the usual case reads two bytes and slices, with no decode."""
    if len(data) > 2 and data[0] == 0x0A and data[1] < 0x80 and len(data) >= 2 + data[1]:
        try:
            return data[2 : 2 + data[1]].decode()
        except UnicodeDecodeError:
            return ""
    try:
        return decode_envelope(data).event_id
    except EnvelopeError:
        return ""


class JetStreamLog:
    """Appends (topic, envelope bytes) records to the events stream, pipelined."""

    def __init__(self, connection: Connection, retention: SubjectRetention | None = None) -> None:
        self.connection = connection
        self.retention = retention
        self._subject = connection.names.subject
        self._subjects: dict[str, str] = {}

    def subject(self, topic: str) -> str:
        subject = self._subjects.get(topic)
        if subject is None:
            subject = self._subjects[topic] = self._subject(topic)
        return subject

    async def append(self, records: Sequence[tuple[str, bytes]]) -> list[str]:
        items = [
            PublishItem(self.subject(topic), data, event_id_of(data)) for topic, data in records
        ]
        if self.retention is not None:
            await self.retention.make_room(item.subject for item in items)
        seqs = await self.connection.publish(items)
        ms = now_ms()
        return [entry_id(ms, seq) for seq in seqs]

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    async def close(self) -> None:
        return None
