"""Every event type round-trips through the envelope and the registry."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from quantum.events.v1 import market_pb2, policy_pb2
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.core import tracing
from runtime.core.envelope import (
    InvalidEnvelope,
    UndecodableEvent,
    UnknownEventTypeError,
    UnknownVersionError,
    decode_envelope,
    open_payload,
    seal,
)
from runtime.core.registry import EventRegistry, UnknownEventType, default_registry

EXPECTED_EVENT_TYPES = {
    "market.tick",
    "ai.signal.generated",
    "risk.signal.approved",
    "risk.signal.rejected",
    "execution.order.submitted",
    "execution.order.filled",
    "execution.order.rejected",
    "portfolio.position.opened",
    "portfolio.position.closed",
    "portfolio.pnl.updated",
    "policy.updated",
    "analytics.stats.updated",
}


def _fill(message: Message, depth: int = 0) -> Message:
    """Set every field of ``message`` to a non-default value, so a lossy round trip shows."""
    descriptor: Descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        value: Any
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            getattr(message, field.name)["k1"] = (
                "1.5"
                if field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_STRING
                else 1
            )
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth > 3:
                continue
            if field.message_type.full_name == "google.protobuf.Timestamp":
                getattr(message, field.name).FromSeconds(1_732_400_000)
            elif field.is_repeated:
                _fill(getattr(message, field.name).add(), depth + 1)
            else:
                _fill(getattr(message, field.name), depth + 1)
            continue
        if field.type == FieldDescriptor.TYPE_STRING:
            value = f"{field.name}-1.25"
        elif field.type == FieldDescriptor.TYPE_BOOL:
            value = True
        elif field.type == FieldDescriptor.TYPE_ENUM:
            value = field.enum_type.values[-1].number
        elif field.type == FieldDescriptor.TYPE_BYTES:
            value = b"\x01\x02"
        else:
            value = 7
        if field.is_repeated:
            getattr(message, field.name).extend([value, value])
        else:
            setattr(message, field.name, value)
    return message


def test_registry_knows_every_event_of_the_design() -> None:
    assert set(default_registry().names()) == EXPECTED_EVENT_TYPES


@pytest.mark.parametrize("name", sorted(EXPECTED_EVENT_TYPES))
def test_every_event_round_trips_through_envelope_and_registry(name: str) -> None:
    registry = default_registry()
    event_type = registry.latest(name)
    payload = _fill(event_type.message())

    envelope = seal(
        payload,
        producer="test",
        partition_key="BTC-USD",
        causation_id="c-1",
        headers={"source": "unit"},
    )
    decoded = decode_envelope(envelope.SerializeToString())
    opened = open_payload(decoded)

    assert decoded.event_type == name
    assert decoded.schema_version == event_type.version
    assert decoded.producer == "test"
    assert decoded.partition_key == "BTC-USD"
    assert decoded.causation_id == "c-1"
    assert dict(decoded.headers) == {"source": "unit"}
    assert type(opened) is event_type.message
    assert opened == payload
    assert registry.for_message(opened) is event_type


def test_seal_carries_the_current_trace_as_parent() -> None:
    with tracing.span() as ctx:
        envelope = seal(market_pb2.MarketTick(symbol="ETH-USD", price="1.0"), producer="md")
    assert envelope.trace_id == ctx.trace_id
    assert envelope.parent_span_id == ctx.span_id
    assert envelope.span_id not in ("", ctx.span_id)


def test_seal_outside_a_trace_starts_a_new_one() -> None:
    first = seal(market_pb2.MarketTick(symbol="A"), producer="md")
    second = seal(market_pb2.MarketTick(symbol="A"), producer="md")
    assert len(first.trace_id) == 32
    assert first.trace_id != second.trace_id
    assert first.event_id < second.event_id


def test_garbage_bytes_are_undecodable() -> None:
    with pytest.raises(UndecodableEvent) as info:
        decode_envelope(b"\xff\xff\xff\xff not protobuf")
    assert info.value.reason == "undecodable"


def test_envelope_without_required_fields_is_invalid() -> None:
    data = Envelope(event_type="market.tick", schema_version=1).SerializeToString()
    with pytest.raises(InvalidEnvelope, match="event_id"):
        decode_envelope(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("trace_id", "xyz"),
        ("trace_id", "A" * 32),
        ("trace_id", "0" * 32),
        ("span_id", "xyz"),
        ("span_id", "0" * 16),
    ],
)
def test_envelope_with_malformed_trace_ids_is_invalid(field: str, value: str) -> None:
    envelope = seal(market_pb2.MarketTick(symbol="A"), producer="md")
    setattr(envelope, field, value)
    with pytest.raises(InvalidEnvelope, match=field) as info:
        decode_envelope(envelope.SerializeToString())
    assert info.value.reason == "invalid"


def test_unknown_type_and_unknown_version_are_told_apart() -> None:
    envelope = seal(market_pb2.MarketTick(symbol="A"), producer="md")
    envelope.event_type = "market.candle"
    with pytest.raises(UnknownEventTypeError, match=r"market\.candle"):
        open_payload(envelope)
    envelope.event_type = "market.tick"
    envelope.schema_version = 9
    with pytest.raises(UnknownVersionError, match=r"known: \[1\]"):
        open_payload(envelope)


def test_payload_that_does_not_match_its_type_is_undecodable() -> None:
    envelope = seal(market_pb2.MarketTick(symbol="A"), producer="md")
    envelope.payload = b"\x0a\xff"  # field 1, length 255, but no bytes follow
    with pytest.raises(UndecodableEvent, match=r"market\.tick"):
        open_payload(envelope)


def test_registry_refuses_a_message_without_an_event_type() -> None:
    with pytest.raises(ValueError, match="event_type"):
        EventRegistry().register(policy_pb2.Policy)
    with pytest.raises(UnknownEventType):
        EventRegistry().for_message(market_pb2.MarketTick)
