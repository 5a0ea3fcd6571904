"""Dead letters on JetStream: one message per letter on ``<ns>.dlq.<domain>``.

The body is one JSON line with the letter's fields (reason, error, attempts, where it came
from: ``runtime.core.dead_letters.DeadLetter``) and then the original entry's bytes exactly
as read, so a redrive publishes the very event. Its message id names the original entry: a
commit redone after a crash stores the letter once.
"""

from __future__ import annotations

import orjson

from runtime.adapters.nats.connection import PublishItem
from runtime.core.dead_letters import DeadLetter, as_reason


def letter_item(subject: str, letter: DeadLetter) -> PublishItem:
    header = {
        "original_stream": letter.original_stream,
        "original_entry_id": letter.original_entry_id,
        "reason": letter.reason,
        "error_type": letter.error_type,
        "error_message": letter.error_message,
        "attempts": letter.attempts,
        "failed_at_ms": letter.failed_at_ms,
        "consumer": letter.consumer,
        "event_type": letter.event_type,
        "event_id": letter.event_id,
    }
    return PublishItem(
        subject,
        orjson.dumps(header) + b"\n" + letter.payload,
        f"dead:{letter.original_stream}:{letter.original_entry_id}",
    )


def decode_letter(entry_id: str, body: bytes) -> DeadLetter:
    head, _, payload = body.partition(b"\n")
    fields = orjson.loads(head)
    return DeadLetter(
        original_stream=str(fields.get("original_stream", "")),
        original_entry_id=str(fields.get("original_entry_id", "")),
        payload=payload,
        reason=as_reason(str(fields.get("reason", ""))),
        error_type=str(fields.get("error_type", "")),
        error_message=str(fields.get("error_message", "")),
        attempts=int(fields.get("attempts", 0)),
        failed_at_ms=int(fields.get("failed_at_ms", 0)),
        consumer=str(fields.get("consumer", "")),
        event_type=str(fields.get("event_type", "")),
        event_id=str(fields.get("event_id", "")),
        entry_id=entry_id,
    )
