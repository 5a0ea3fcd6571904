"""Handlers see one schema version; producers emit the version they are configured for."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from quantum.events.v1 import ai_pb2 as ai_v1
from quantum.events.v1 import execution_pb2 as execution_v1
from quantum.events.v1 import market_pb2
from quantum.events.v1.common_pb2 import SIDE_BUY, SIDE_SELL
from quantum.events.v2 import ai_pb2 as ai_v2
from quantum.events.v2 import execution_pb2 as execution_v2

from runtime.core.actor import Actor, HandlerContext, deliver, handles
from runtime.core.envelope import UnknownVersionError, decode_envelope, open_payload, seal
from runtime.core.registry import default_registry
from runtime.core.schema_v2 import fill_totals
from runtime.core.upcasting import (
    LossyDowncast,
    MissingConverter,
    SchemaConverters,
    check_emit_versions,
    default_converters,
    for_emission,
    parse_emit_versions,
)


def _at(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def signal_v1() -> ai_v1.SignalGenerated:
    return ai_v1.SignalGenerated(
        signal_id="sig-1",
        symbol="BTC-USD",
        side=SIDE_BUY,
        confidence="0.73",
        model_id="ema-crossover/1",
        features={"ema_fast": "101.5", "ema_slow": "100.25"},
        reference_price="101.25",
        generated_at=_at(1_732_400_000),
    )


def signal_v2() -> ai_v2.SignalGenerated:
    return ai_v2.SignalGenerated(
        signal_id="sig-2",
        symbol="ETH-USD",
        side=SIDE_SELL,
        confidence=ai_v2.Confidence(
            value="0.61",
            model_id="gbm/7",
            calibration_method=ai_v2.CALIBRATION_METHOD_ISOTONIC,
            calibration_version="2026-11-01",
        ),
        features={"rsi": "71.2"},
        reference_price="3050.5",
        generated_at=_at(1_732_400_060),
    )


def filled_v2(*, second_currency: bool = False) -> execution_v2.OrderFilled:
    fills = [
        execution_v2.PartialFill(
            trade_id="t-1",
            quantity="0.4",
            price="100",
            fee="0.04",
            fee_currency="USDT",
            liquidity=execution_v2.LIQUIDITY_MAKER,
            filled_at=_at(1_732_400_001),
        ),
        execution_v2.PartialFill(
            trade_id="t-2",
            quantity="0.6",
            price="101",
            fee="0.0001" if second_currency else "0.06",
            fee_currency="BNB" if second_currency else "USDT",
            liquidity=execution_v2.LIQUIDITY_TAKER,
            filled_at=_at(1_732_400_002),
        ),
    ]
    totals = fill_totals(fills)
    return execution_v2.OrderFilled(
        order_id="ord-1",
        signal_id="sig-1",
        symbol="BTC-USD",
        side=SIDE_BUY,
        slippage_bps="2.5",
        exchange="paper",
        filled_at=_at(1_732_400_002),
        fills=fills,
        filled_quantity=totals.quantity,
        average_price=totals.average_price,
        fees_by_currency=totals.fees_by_currency,
    )


class SignalConsumerV2(Actor):
    """A consumer migrated to v2: it never sees a v1 payload."""

    name = "risk_safety"

    def __init__(self) -> None:
        self.seen: list[ai_v2.SignalGenerated] = []

    @handles
    def on_signal(self, signal: ai_v2.SignalGenerated, ctx: HandlerContext) -> None:
        self.seen.append(signal)


class SignalProducer(Actor):
    """Domain code written against v2 only; the configuration picks the wire version."""

    name = "ai_engine"

    @handles
    def on_tick(self, tick: market_pb2.MarketTick, ctx: HandlerContext) -> None:
        ctx.emit(signal_v2())


def test_upcast_signal_keeps_every_v1_fact() -> None:
    upcast = default_converters().convert_to(signal_v1(), ai_v2.SignalGenerated)

    assert upcast.signal_id == "sig-1"
    assert upcast.side == SIDE_BUY
    assert upcast.confidence == ai_v2.Confidence(
        value="0.73",
        model_id="ema-crossover/1",
        calibration_method=ai_v2.CALIBRATION_METHOD_UNSPECIFIED,
    )
    assert dict(upcast.features) == {"ema_fast": "101.5", "ema_slow": "100.25"}
    assert upcast.reference_price == "101.25"
    assert upcast.generated_at == _at(1_732_400_000)


def test_signal_survives_up_then_down() -> None:
    converters = default_converters()
    back = converters.convert(converters.convert(signal_v1(), 2), 1)
    assert back == signal_v1()


def test_upcast_fill_is_one_partial_fill_with_matching_totals() -> None:
    old = execution_v1.OrderFilled(
        order_id="ord-9",
        signal_id="sig-9",
        symbol="BTC-USD",
        side=SIDE_SELL,
        quantity="0.5",
        price="99.5",
        fee="0.02",
        fee_currency="USDT",
        slippage_bps="3",
        exchange="paper",
        filled_at=_at(1_732_400_100),
    )
    new = default_converters().convert_to(old, execution_v2.OrderFilled)

    assert [(f.quantity, f.price, f.fee, f.fee_currency) for f in new.fills] == [
        ("0.5", "99.5", "0.02", "USDT")
    ]
    assert new.fills[0].liquidity == execution_v2.LIQUIDITY_UNSPECIFIED
    assert new.fills[0].filled_at == _at(1_732_400_100)
    assert (new.filled_quantity, new.average_price) == ("0.5", "99.5")
    assert dict(new.fees_by_currency) == {"USDT": "0.02"}
    assert default_converters().convert(new, 1) == old


def test_downcast_fill_reports_quantity_weighted_totals() -> None:
    old = default_converters().convert_to(filled_v2(), execution_v1.OrderFilled)
    assert (old.quantity, old.price, old.fee, old.fee_currency) == ("1", "100.6", "0.1", "USDT")
    assert old.filled_at == _at(1_732_400_002)


def test_downcast_refuses_fees_in_two_currencies() -> None:
    with pytest.raises(LossyDowncast, match=r"ord-1.*\['BNB', 'USDT'\]"):
        default_converters().convert(filled_v2(second_currency=True), 1)


def test_a_converter_must_join_adjacent_versions_of_one_event_type() -> None:
    converters = SchemaConverters(default_registry())
    with pytest.raises(ValueError, match="one event type"):
        converters.register(ai_v1.SignalGenerated, execution_v2.OrderFilled, lambda m: m)  # type: ignore[arg-type,return-value]
    with pytest.raises(MissingConverter, match="no converter from v1 to v2"):
        converters.convert(signal_v1(), 2)


def test_emit_versions_are_parsed_and_checked() -> None:
    versions = parse_emit_versions(" ai.signal.generated=1, execution.order.filled=v2 ,")
    assert versions == {"ai.signal.generated": 1, "execution.order.filled": 2}
    check_emit_versions(versions)
    with pytest.raises(ValueError, match="QUANTUM_EMIT_VERSIONS"):
        parse_emit_versions("ai.signal.generated")
    with pytest.raises(LookupError, match="no schema version 3"):
        check_emit_versions({"ai.signal.generated": 3})


def test_emission_converts_only_the_configured_types() -> None:
    tick = market_pb2.MarketTick(symbol="A")
    assert for_emission(tick, {"ai.signal.generated": 1}) is tick
    assert for_emission(signal_v2(), {}) == signal_v2()
    assert type(for_emission(signal_v2(), {"ai.signal.generated": 1})) is ai_v1.SignalGenerated


async def test_producer_emits_the_configured_version_of_one_constructed_type() -> None:
    tick = seal(market_pb2.MarketTick(symbol="ETH-USD"), producer="market_data")
    old_fleet, new_fleet = SignalProducer(), SignalProducer()
    old_fleet.emit_versions = {"ai.signal.generated": 1}

    (as_v1,) = await deliver(old_fleet, tick)
    (as_v2,) = await deliver(new_fleet, tick)

    assert (as_v1.event_type, as_v1.schema_version) == ("ai.signal.generated", 1)
    assert (as_v2.event_type, as_v2.schema_version) == ("ai.signal.generated", 2)
    assert open_payload(as_v1) == default_converters().convert(signal_v2(), 1)
    assert open_payload(as_v2) == signal_v2()


async def test_mixed_fleet_consumer_on_v2_receives_v1_and_v2_as_v2() -> None:
    from_old_producer = seal(signal_v1(), producer="ai_engine")
    from_new_producer = seal(signal_v2(), producer="ai_engine")
    assert (from_old_producer.schema_version, from_new_producer.schema_version) == (1, 2)
    consumer = SignalConsumerV2()

    for envelope in (from_old_producer, from_new_producer):
        await deliver(consumer, decode_envelope(envelope.SerializeToString()))

    assert [type(s) for s in consumer.seen] == [ai_v2.SignalGenerated] * 2
    assert consumer.seen[0].confidence.value == "0.73"
    assert consumer.seen[0].confidence.model_id == "ema-crossover/1"
    assert consumer.seen[1] == signal_v2()


async def test_a_payload_opened_by_the_runner_is_upcast_too() -> None:
    envelope = seal(signal_v1(), producer="ai_engine")
    consumer = SignalConsumerV2()
    await deliver(consumer, envelope, payload=open_payload(envelope))
    assert consumer.seen[0].confidence.value == "0.73"


class FillConsumerV1(Actor):
    """A consumer not yet migrated: it keeps reading v1 while producers emit v2."""

    name = "analytics"

    def __init__(self) -> None:
        self.seen: list[execution_v1.OrderFilled] = []

    @handles
    def on_fill(self, filled: execution_v1.OrderFilled, ctx: HandlerContext) -> None:
        self.seen.append(filled)


async def test_a_v1_handler_receives_v2_events_downcast() -> None:
    consumer = FillConsumerV1()
    await deliver(consumer, seal(filled_v2(), producer="execution"))
    assert consumer.seen == [default_converters().convert(filled_v2(), 1)]


async def test_an_event_a_handler_version_cannot_express_is_an_unknown_version() -> None:
    envelope = seal(filled_v2(second_currency=True), producer="execution")
    with pytest.raises(UnknownVersionError, match="cannot be read by a handler of v1") as info:
        await deliver(FillConsumerV1(), envelope)
    assert info.value.reason == "unknown_version"


def test_the_process_setting_comes_from_quantum_emit_versions() -> None:
    program = (
        "from runtime.core.upcasting import process_emit_versions as p; print(sorted(p().items()))"
    )
    env = {**os.environ, "QUANTUM_EMIT_VERSIONS": "execution.order.filled=1"}
    result = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[('execution.order.filled', 1)]"

    env["QUANTUM_EMIT_VERSIONS"] = "execution.order.filled=9"
    failed = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=False
    )
    assert failed.returncode != 0
    assert "has no schema version 9" in failed.stderr
