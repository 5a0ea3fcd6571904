"""Fields an older consumer does not know survive its decode and re-encode.

"Newer producer" schemas are built here at run time: today's v1 file plus an added field,
exactly what the next additive release would ship. Bytes they write pass through today's
classes (a relay, a dead-letter redrive, a replay) and must reach a newer consumer intact.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf.message import Message
from quantum.events.v1 import ai_pb2 as ai_v1
from quantum.events.v1 import common_pb2, envelope_pb2, options_pb2
from quantum.events.v1 import execution_pb2 as execution_v1
from quantum.events.v2 import ai_pb2 as ai_v2
from quantum.events.v2 import execution_pb2 as execution_v2

from runtime.core.envelope import decode_envelope, open_payload, seal

from .record_golden import SAMPLES


def _newer_schema(
    file: object, message_name: str, field: descriptor_pb2.FieldDescriptorProto
) -> type[Message]:
    """``message_name`` of ``file`` (a generated module's DESCRIPTOR) with ``field`` added."""
    pool = descriptor_pool.DescriptorPool()
    for dependency in (
        descriptor_pb2.DESCRIPTOR,
        timestamp_pb2.DESCRIPTOR,
        common_pb2.DESCRIPTOR,
        options_pb2.DESCRIPTOR,
    ):
        proto = descriptor_pb2.FileDescriptorProto()
        dependency.CopyToProto(proto)
        pool.Add(proto)
    newer = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(newer)  # type: ignore[attr-defined]
    (message,) = [m for m in newer.message_type if m.name == message_name]
    message.field.append(field)
    pool.Add(newer)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{newer.package}.{message_name}")
    )


def _string_field(name: str, number: int) -> descriptor_pb2.FieldDescriptorProto:
    return descriptor_pb2.FieldDescriptorProto(
        name=name,
        number=number,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        json_name=name,
    )


def test_a_field_added_to_a_v1_payload_survives_an_older_consumer() -> None:
    newer_signal = _newer_schema(ai_v1.DESCRIPTOR, "SignalGenerated", _string_field("regime", 20))
    written = newer_signal()
    written.ParseFromString(SAMPLES[("ai.signal.generated", 1)]().SerializeToString())
    written.regime = "trending"  # type: ignore[attr-defined]
    envelope = seal(ai_v1.SignalGenerated(), producer="ai_engine")
    envelope.payload = written.SerializeToString()

    older = open_payload(decode_envelope(envelope.SerializeToString()))
    passed_on = older.SerializeToString()

    assert type(older) is ai_v1.SignalGenerated
    assert older.confidence == "0.73"
    read_by_newer = newer_signal()
    read_by_newer.ParseFromString(passed_on)
    assert read_by_newer.regime == "trending"  # type: ignore[attr-defined]
    assert read_by_newer == written


def test_a_field_added_to_the_envelope_survives_an_older_consumer() -> None:
    newer_envelope = _newer_schema(envelope_pb2.DESCRIPTOR, "Envelope", _string_field("tenant", 13))
    written = newer_envelope()
    written.ParseFromString(seal(ai_v1.SignalGenerated(), producer="ai_engine").SerializeToString())
    written.tenant = "desk-7"  # type: ignore[attr-defined]

    older = decode_envelope(written.SerializeToString())
    passed_on = older.SerializeToString()

    read_by_newer = newer_envelope()
    read_by_newer.ParseFromString(passed_on)
    assert read_by_newer.tenant == "desk-7"  # type: ignore[attr-defined]
    assert read_by_newer == written


def test_v2_signal_bytes_pass_through_a_v1_class_intact() -> None:
    written = SAMPLES[("ai.signal.generated", 2)]()
    assert isinstance(written, ai_v2.SignalGenerated)
    older = ai_v1.SignalGenerated()
    older.ParseFromString(written.SerializeToString())

    # v2 never reuses a v1 field number whose meaning changed: v1 sees them as absent.
    assert (older.confidence, older.model_id) == ("", "")
    assert older.signal_id == written.signal_id
    again = ai_v2.SignalGenerated()
    again.ParseFromString(older.SerializeToString())
    assert again == written


def test_v2_fill_bytes_pass_through_a_v1_class_intact() -> None:
    written = SAMPLES[("execution.order.filled", 2)]()
    assert isinstance(written, execution_v2.OrderFilled)
    older = execution_v1.OrderFilled()
    older.ParseFromString(written.SerializeToString())

    assert (older.quantity, older.price, older.fee) == ("", "", "")
    assert older.order_id == written.order_id
    again = execution_v2.OrderFilled()
    again.ParseFromString(older.SerializeToString())
    assert again == written
