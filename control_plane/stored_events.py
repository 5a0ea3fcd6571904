"""Turning stream entries and trace-index items into ``StoredEvent`` messages."""

from __future__ import annotations

from google.protobuf import json_format
from quantum.control.v1.stored_event_pb2 import StoredEvent
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.core.envelope import EnvelopeError, open_payload
from runtime.core.registry import EventRegistry

ENVELOPE_FIELD = b"envelope"


def payload_json(envelope: Envelope, registry: EventRegistry) -> str:
    """The payload as canonical protobuf JSON, or "" when this server cannot decode it."""
    try:
        payload = open_payload(envelope, registry)
    except EnvelopeError:
        return ""
    return json_format.MessageToJson(payload, indent=None, preserving_proto_field_name=True)


def stored_event(
    stream: str, entry_id: str, envelope: Envelope, registry: EventRegistry
) -> StoredEvent:
    """One event with where it sits and its payload for people."""
    return StoredEvent(
        stream=stream,
        entry_id=entry_id,
        envelope=envelope,
        payload_json=payload_json(envelope, registry),
    )


def parse_envelope(data: bytes) -> Envelope | None:
    """Envelope bytes parsed leniently (the control plane shows what it can), or None."""
    envelope = Envelope()
    try:
        envelope.ParseFromString(data)
    except Exception:  # DecodeError and friends: a broken entry is skipped, never fatal
        return None
    return envelope


def entry_id_text(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id
