"""Dead letters: entries a domain gave up on, kept with why, in ``<namespace>:dlq:<domain>``.

An entry lands here either at once (it does not decode, or its type or version is unknown,
or its envelope lacks required fields) or after ``max_deliveries`` failed handler attempts.
The original entry's bytes are kept exactly as read, so a redrive publishes the very event.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from runtime.core.keys import Keyspace

Reason = Literal["handler_failed", "undecodable", "unknown_type", "unknown_version", "invalid"]
REASONS: tuple[Reason, ...] = (
    "handler_failed",
    "undecodable",
    "unknown_type",
    "unknown_version",
    "invalid",
)
DLQ_MAXLEN = 100_000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered entry, with the error that sent it there."""

    original_stream: str
    original_entry_id: str
    payload: bytes
    reason: Reason
    error_type: str
    error_message: str
    attempts: int
    failed_at_ms: int
    consumer: str
    event_type: str = ""
    event_id: str = ""
    entry_id: str = ""  # the id in the dead-letter stream, when read back

    def fields(self) -> dict[bytes, bytes]:
        """The fields of the dead-letter stream entry."""
        out = {
            b"original_stream": self.original_stream.encode(),
            b"original_entry_id": self.original_entry_id.encode(),
            b"payload": self.payload,
            b"reason": self.reason.encode(),
            b"error_type": self.error_type.encode(),
            b"error_message": self.error_message.encode(),
            b"attempts": str(self.attempts).encode(),
            b"failed_at_ms": str(self.failed_at_ms).encode(),
            b"consumer": self.consumer.encode(),
        }
        if self.event_type:
            out[b"event_type"] = self.event_type.encode()
        if self.event_id:
            out[b"event_id"] = self.event_id.encode()
        return out

    @classmethod
    def from_fields(cls, entry_id: str, fields: dict[bytes, bytes]) -> DeadLetter:
        """Read a dead-letter stream entry back."""

        def text(name: bytes) -> str:
            return fields.get(name, b"").decode("utf-8", "replace")

        reason = text(b"reason")
        return cls(
            original_stream=text(b"original_stream"),
            original_entry_id=text(b"original_entry_id"),
            payload=fields.get(b"payload", b""),
            reason=as_reason(reason),
            error_type=text(b"error_type"),
            error_message=text(b"error_message"),
            attempts=int(text(b"attempts") or 0),
            failed_at_ms=int(text(b"failed_at_ms") or 0),
            consumer=text(b"consumer"),
            event_type=text(b"event_type"),
            event_id=text(b"event_id"),
            entry_id=entry_id,
        )


def as_reason(text: str) -> Reason:
    """The known dead-letter reason named by ``text``; anything else is \"invalid\"."""
    for reason in REASONS:
        if reason == text:
            return reason
    return "invalid"


def now_ms() -> int:
    return int(time.time() * 1000)


def xadd_args(keyspace: Keyspace, domain: str, letter: DeadLetter) -> list[Any]:
    """The XADD command (as arguments) that records ``letter`` for ``domain``."""
    args: list[Any] = ["XADD", keyspace.dlq(domain), "MAXLEN", "~", DLQ_MAXLEN, "*"]
    for name, value in letter.fields().items():
        args.extend((name, value))
    return args


async def read_dead_letters(
    redis: Any, keyspace: Keyspace, domain: str, count: int = 100, start: str = "-"
) -> list[DeadLetter]:
    """The oldest ``count`` dead letters of ``domain`` from ``start`` on."""
    entries = await redis.xrange(keyspace.dlq(domain), min=start, max="+", count=count)
    return [
        DeadLetter.from_fields(entry_id.decode() if isinstance(entry_id, bytes) else entry_id, f)
        for entry_id, f in entries
    ]
