"""Recorded bytes of every released event version keep decoding with today's code.

The golden files under golden/ were written once by record_golden.py and are never rewritten.
Each test reads them as a consumer built from today's schema would: decode the envelope, open
the payload, upcast it to the newest version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from quantum.events.v1.envelope_pb2 import Envelope
from quantum.events.v2 import ai_pb2 as ai_v2
from quantum.events.v2 import execution_pb2 as execution_v2

from runtime.core.actor import Actor, HandlerContext, deliver, handles
from runtime.core.envelope import decode_envelope, open_payload
from runtime.core.registry import default_registry
from runtime.core.upcasting import default_converters

GOLDEN_DIR = Path(__file__).with_name("golden")
GOLDEN_FILES = sorted(GOLDEN_DIR.glob("v*/*.binpb"))


def _recorded(binary: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(binary.with_suffix(".json").read_text(encoding="utf-8"))
    return loaded


def _golden(version: int, name: str) -> Envelope:
    return decode_envelope((GOLDEN_DIR / f"v{version}" / f"{name}.binpb").read_bytes())


def test_every_registered_event_version_has_a_golden_file() -> None:
    missing = [
        f"{t.name} v{t.version}"
        for t in default_registry()
        if not (GOLDEN_DIR / f"v{t.version}" / f"{t.name}.binpb").exists()
    ]
    assert not missing, f"record them: .venv/bin/python tests/schema/record_golden.py ({missing})"


def test_no_golden_file_was_removed() -> None:
    """Golden files are kept forever: these were recorded with v1 and v2 of the schema."""
    v1 = {
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
    v2 = {"ai.signal.generated", "execution.order.filled"}
    recorded = {(path.parent.name, path.stem) for path in GOLDEN_FILES}
    assert {("v1", name) for name in v1} | {("v2", name) for name in v2} <= recorded
    assert all(path.with_suffix(".json").exists() for path in GOLDEN_FILES)


@pytest.mark.parametrize("binary", GOLDEN_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden_envelope_decodes_to_what_was_recorded(binary: Path) -> None:
    recorded = _recorded(binary)
    envelope = decode_envelope(binary.read_bytes())
    payload = open_payload(envelope)

    meta = Envelope()
    meta.CopyFrom(envelope)
    meta.ClearField("payload")
    assert json_format.MessageToDict(meta) == recorded["envelope"]
    assert payload.DESCRIPTOR.full_name == recorded["payload_type"]
    assert json_format.MessageToDict(payload) == recorded["payload"]
    # Nothing was dropped or reinterpreted: today's code writes back the very same bytes.
    assert payload.SerializeToString(deterministic=True) == envelope.payload
    assert envelope.SerializeToString(deterministic=True) == binary.read_bytes()


@pytest.mark.parametrize("binary", GOLDEN_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden_payload_upcasts_to_the_newest_version(binary: Path) -> None:
    envelope = decode_envelope(binary.read_bytes())
    newest = default_registry().latest(envelope.event_type)

    upcast = default_converters().convert(open_payload(envelope), newest.version)

    assert type(upcast) is newest.message


def test_golden_v1_signal_reads_as_v2_with_its_confidence() -> None:
    v1 = _recorded(GOLDEN_DIR / "v1" / "ai.signal.generated.binpb")["payload"]
    upcast = default_converters().convert_to(
        open_payload(_golden(1, "ai.signal.generated")), ai_v2.SignalGenerated
    )
    assert upcast.confidence.value == v1["confidence"] == "0.73"
    assert upcast.confidence.model_id == v1["modelId"]
    assert upcast.confidence.calibration_method == ai_v2.CALIBRATION_METHOD_UNSPECIFIED
    assert dict(upcast.features) == v1["features"]
    assert upcast.signal_id == v1["signalId"]


def test_golden_v1_fill_reads_as_v2_with_one_partial_fill() -> None:
    v1 = _recorded(GOLDEN_DIR / "v1" / "execution.order.filled.binpb")["payload"]
    upcast = default_converters().convert_to(
        open_payload(_golden(1, "execution.order.filled")), execution_v2.OrderFilled
    )
    (fill,) = upcast.fills
    assert (fill.quantity, fill.price, fill.fee, fill.fee_currency) == (
        v1["quantity"],
        v1["price"],
        v1["fee"],
        v1["feeCurrency"],
    )
    assert (upcast.filled_quantity, upcast.average_price) == (v1["quantity"], v1["price"])
    assert dict(upcast.fees_by_currency) == {v1["feeCurrency"]: v1["fee"]}


class FillBook(Actor):
    """A portfolio written against v2 fills."""

    name = "portfolio"

    def __init__(self) -> None:
        self.fills: list[execution_v2.OrderFilled] = []

    @handles
    def on_fill(self, filled: execution_v2.OrderFilled, ctx: HandlerContext) -> None:
        self.fills.append(filled)


async def test_a_v2_handler_receives_golden_fills_of_both_versions() -> None:
    book = FillBook()
    await deliver(book, _golden(1, "execution.order.filled"))
    await deliver(book, _golden(2, "execution.order.filled"))

    assert [f.order_id for f in book.fills] == ["ord-golden-1", "ord-golden-2"]
    assert [len(f.fills) for f in book.fills] == [1, 2]
    assert book.fills[1].fees_by_currency == {"USDT": "0.7625", "BNB": "0.0009"}
