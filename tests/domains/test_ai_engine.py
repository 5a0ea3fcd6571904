"""ai_engine: the default EMA-crossover model and the actor around any SignalModel."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest
from quantum.events.v1.ai_pb2 import SignalGenerated
from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.market_pb2 import MarketTick

from runtime.core.actor import deliver
from runtime.core.envelope import open_payload, timestamp
from runtime.core.failures import InvalidEvent
from runtime.domains.ai_engine import AiEngine, EmaCrossoverModel, Signal, signal_id_for
from tests.domains.support import at, envelope

FLAT_THEN_UP = ["100"] * 6 + ["101", "102", "103"]


def _tick(price: str, seq: int, symbol: str = "BTC-USD") -> MarketTick:
    return MarketTick(
        symbol=symbol, price=price, sequence=seq, observed_at=timestamp(at(seq)), source="t"
    )


def _model() -> EmaCrossoverModel:
    return EmaCrossoverModel(fast=2, slow=4)


def test_no_signal_during_warmup_then_buy_on_the_upturn() -> None:
    model = _model()
    results = [model.observe(_tick(p, i + 1)) for i, p in enumerate(FLAT_THEN_UP)]
    assert results[:6] == [None] * 6
    signal = results[6]
    assert signal is not None
    assert signal.side == Side.SIDE_BUY
    assert Decimal("0.5") < signal.confidence <= 1
    assert set(signal.features) == {"ema_fast", "ema_slow", "spread", "volatility"}
    assert signal.features["ema_fast"] > signal.features["ema_slow"]
    assert results[7:] == [None, None]  # the regime holds: no repeated call


def test_sell_when_the_trend_turns_down() -> None:
    model = _model()
    prices = [*FLAT_THEN_UP, "100", "97", "94"]
    signals = [s for i, p in enumerate(prices) if (s := model.observe(_tick(p, i + 1)))]
    assert [s.side for s in signals] == [Side.SIDE_BUY, Side.SIDE_SELL]


def test_a_duplicate_tick_says_nothing_new() -> None:
    model = _model()
    for i, p in enumerate(FLAT_THEN_UP[:6]):
        model.observe(_tick(p, i + 1))
    assert model.observe(_tick("101", 7)) is not None
    model2 = _model()
    for i, p in enumerate(FLAT_THEN_UP[:6]):
        model2.observe(_tick(p, i + 1))
    assert model2.observe(_tick("101", 6)) is None  # sequence 6 was seen already


def test_symbols_are_tracked_apart() -> None:
    model = _model()
    for i, p in enumerate(FLAT_THEN_UP[:6]):
        model.observe(_tick(p, i + 1, "BTC-USD"))
    assert model.observe(_tick("101", 1, "ETH-USD")) is None  # ETH has no history yet


def test_snapshot_and_restore_continue_identically() -> None:
    a = _model()
    for i, p in enumerate(FLAT_THEN_UP[:6]):
        a.observe(_tick(p, i + 1))
    b = _model()
    b.restore(json.loads(json.dumps(a.snapshot())))
    assert a.observe(_tick("101", 7)) == b.observe(_tick("101", 7))


def test_model_refuses_bad_spans() -> None:
    with pytest.raises(ValueError, match="fast < slow"):
        EmaCrossoverModel(fast=5, slow=5)


async def test_engine_emits_signal_generated_with_derived_id() -> None:
    engine = AiEngine(_model())
    outputs = []
    last = None
    for i, p in enumerate(FLAT_THEN_UP[:7]):
        last = envelope(_tick(p, i + 1), when=at(i + 1))
        outputs.extend(await deliver(engine, last))
    assert last is not None
    assert len(outputs) == 1
    out = outputs[0]
    assert out.event_type == "ai.signal.generated"
    assert out.causation_id == last.event_id
    assert out.partition_key == "BTC-USD"
    signal = open_payload(out)
    assert isinstance(signal, SignalGenerated)
    assert signal.signal_id == signal_id_for(last.event_id)
    assert signal.model_id == "ema-crossover/1"
    assert signal.side == Side.SIDE_BUY
    assert signal.reference_price == "101"
    assert 0 < Decimal(signal.confidence) <= 1
    assert "ema_fast" in signal.features
    assert signal.generated_at.ToDatetime() == at(7).replace(tzinfo=None)


BAD_PRICES = ["0", "-1", "NaN", "Infinity", "sNaN", "x", ""]


async def test_ticks_without_a_usable_price_are_invalid_and_poison_nothing() -> None:
    engine, clean = AiEngine(_model()), AiEngine(_model())
    seq = 0
    signals = []
    for p in BAD_PRICES:  # before the first good tick: a symbol must not start at price 0
        seq += 1
        with pytest.raises(InvalidEvent, match="price"):
            await deliver(engine, envelope(_tick(p, seq)))
    for i, p in enumerate(FLAT_THEN_UP):
        for bad in (p, *BAD_PRICES) if i == 3 else (p,):  # and between good ones
            seq += 1
            if bad in BAD_PRICES:
                with pytest.raises(InvalidEvent, match="price"):
                    await deliver(engine, envelope(_tick(bad, seq), when=at(seq)))
                continue
            signals.extend(await deliver(engine, envelope(_tick(bad, seq), when=at(seq))))
        await deliver(clean, envelope(_tick(p, i + 1)))
    [out] = signals
    signal = open_payload(out)
    assert isinstance(signal, SignalGenerated)
    assert (signal.side, signal.reference_price) == (Side.SIDE_BUY, "101")
    state, clean_state = json.loads(engine.snapshot_state()), json.loads(clean.snapshot_state())
    for symbol_state in (state["model"]["BTC-USD"], clean_state["model"]["BTC-USD"]):
        del symbol_state["last_sequence"]
    assert state == clean_state  # the bad ticks left no trace in the averages


class AlwaysSell:
    """A plug-in model: proves the engine takes any SignalModel."""

    model_id = "always-sell/0"

    def observe(self, tick: MarketTick) -> Signal | None:
        return Signal(Side.SIDE_SELL, Decimal("0.9"), {"price": Decimal(tick.price)})

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, state: Mapping[str, Any]) -> None:
        pass


async def test_engine_takes_a_pluggable_model() -> None:
    engine = AiEngine(AlwaysSell())
    [out] = await deliver(engine, envelope(_tick("50", 1)))
    signal = open_payload(out)
    assert isinstance(signal, SignalGenerated)
    assert (signal.model_id, signal.side, signal.confidence) == ("always-sell/0", 2, "0.9")
    assert dict(signal.features) == {"price": "50"}


def test_engine_snapshot_refuses_another_model() -> None:
    engine = AiEngine(_model())
    data = engine.snapshot_state()
    with pytest.raises(ValueError, match="always-sell/0"):
        AiEngine(AlwaysSell()).restore_state(data)
