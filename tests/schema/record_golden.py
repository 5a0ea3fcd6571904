"""Record the golden files: the envelope bytes of every event of every schema version.

Run once per new event type or version: ``.venv/bin/python tests/schema/record_golden.py``.
A golden file is a promise to keep decoding those bytes forever, so this script never
overwrites one: it records only what is missing and says what it kept. Beside each
``<type>.binpb`` it writes ``<type>.json``, the decoded envelope and payload in proto JSON,
which the tests compare today's decoding with.

Every sample sets every field of its payload to a non-default value, so a field whose number,
type or JSON name changes shows up as a difference.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from quantum.events.v1 import ai_pb2 as ai_v1
from quantum.events.v1 import analytics_pb2, market_pb2, policy_pb2, portfolio_pb2, risk_pb2
from quantum.events.v1 import execution_pb2 as execution_v1
from quantum.events.v1.common_pb2 import SIDE_BUY, SIDE_SELL
from quantum.events.v1.envelope_pb2 import Envelope
from quantum.events.v2 import ai_pb2 as ai_v2
from quantum.events.v2 import execution_pb2 as execution_v2

from runtime.core.envelope import seal
from runtime.core.ids import derive_event_id
from runtime.core.registry import EventType, default_registry
from runtime.core.tracing import TraceContext

GOLDEN_DIR = Path(__file__).with_name("golden")
_ROOT_EVENT_ID = "01JDB6Q8G0Q5XN2M3P4R5S6T7V"
_TRACE = TraceContext(trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id="00f067aa0ba902b7")
_OCCURRED_AT = datetime(2026, 11, 23, 12, 0, 0, 250_000, tzinfo=UTC)


def _ts(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def _limits(scale: int) -> policy_pb2.ModeLimits:
    return policy_pb2.ModeLimits(
        min_confidence=f"0.{5 + scale}",
        max_leverage=f"{4 - scale}",
        max_position_notional=f"{50_000 - 10_000 * scale}",
        max_open_positions=5 - scale,
        risk_per_trade_pct=f"{2 - 0.5 * scale}",
        max_daily_loss_pct=f"{5 - scale}",
        allowed_symbols=["BTC-USD", "ETH-USD"],
        max_orders_per_second=10 - scale,
        max_drawdown_pct=f"{20 - 5 * scale}",
    )


def _signal_v2() -> ai_v2.SignalGenerated:
    return ai_v2.SignalGenerated(
        signal_id="sig-golden-2",
        symbol="ETH-USD",
        side=SIDE_SELL,
        features={"rsi": "71.2", "ema_gap": "-0.0031"},
        reference_price="3050.5",
        generated_at=_ts(1_732_400_060, 5_000),
        confidence=ai_v2.Confidence(
            value="0.61",
            model_id="gbm/7",
            calibration_method=ai_v2.CALIBRATION_METHOD_ISOTONIC,
            calibration_version="2026-11-01",
        ),
    )


def _filled_v2() -> execution_v2.OrderFilled:
    return execution_v2.OrderFilled(
        order_id="ord-golden-2",
        signal_id="sig-golden-2",
        symbol="ETH-USD",
        side=SIDE_SELL,
        slippage_bps="1.8",
        exchange="paper",
        filled_at=_ts(1_732_400_062),
        fills=[
            execution_v2.PartialFill(
                trade_id="t-1",
                quantity="0.25",
                price="3050",
                fee="0.7625",
                fee_currency="USDT",
                liquidity=execution_v2.LIQUIDITY_MAKER,
                filled_at=_ts(1_732_400_061),
            ),
            execution_v2.PartialFill(
                trade_id="t-2",
                quantity="0.75",
                price="3049",
                fee="0.0009",
                fee_currency="BNB",
                liquidity=execution_v2.LIQUIDITY_TAKER,
                filled_at=_ts(1_732_400_062),
            ),
        ],
        filled_quantity="1",
        average_price="3049.25",
        fees_by_currency={"USDT": "0.7625", "BNB": "0.0009"},
    )


SAMPLES: dict[tuple[str, int], Callable[[], Message]] = {
    ("market.tick", 1): lambda: market_pb2.MarketTick(
        symbol="BTC-USD",
        price="101.25",
        bid="101.2",
        ask="101.3",
        volume="3.5",
        observed_at=_ts(1_732_400_000, 250_000_000),
        sequence=42,
        source="simulated:seed=7",
    ),
    ("ai.signal.generated", 1): lambda: ai_v1.SignalGenerated(
        signal_id="sig-golden-1",
        symbol="BTC-USD",
        side=SIDE_BUY,
        confidence="0.73",
        model_id="ema-crossover/1",
        features={"ema_fast": "101.5", "ema_slow": "100.25"},
        reference_price="101.25",
        generated_at=_ts(1_732_400_001),
    ),
    ("ai.signal.generated", 2): _signal_v2,
    ("risk.signal.approved", 1): lambda: risk_pb2.SignalApproved(
        signal_id="sig-golden-1",
        symbol="BTC-USD",
        side=SIDE_BUY,
        quantity="0.5",
        notional="50.625",
        reference_price="101.25",
        policy_version=3,
        mode=policy_pb2.RISK_MODE_NORMAL,
        reduce_only=True,
        decided_at=_ts(1_732_400_002),
    ),
    ("risk.signal.rejected", 1): lambda: risk_pb2.SignalRejected(
        signal_id="sig-golden-3",
        symbol="DOGE-USD",
        side=SIDE_SELL,
        reason=risk_pb2.REJECT_REASON_SYMBOL_NOT_ALLOWED,
        detail="DOGE-USD is not in the NORMAL allow-list",
        limit="BTC-USD,ETH-USD",
        actual="DOGE-USD",
        policy_version=3,
        mode=policy_pb2.RISK_MODE_NORMAL,
        decided_at=_ts(1_732_400_003),
    ),
    ("execution.order.submitted", 1): lambda: execution_v1.OrderSubmitted(
        order_id="ord-golden-1",
        signal_id="sig-golden-1",
        symbol="BTC-USD",
        side=SIDE_BUY,
        quantity="0.5",
        order_type="market",
        exchange="paper",
        reduce_only=True,
        submitted_at=_ts(1_732_400_004),
    ),
    ("execution.order.filled", 1): lambda: execution_v1.OrderFilled(
        order_id="ord-golden-1",
        signal_id="sig-golden-1",
        symbol="BTC-USD",
        side=SIDE_BUY,
        quantity="0.5",
        price="101.27",
        fee="0.0506",
        fee_currency="USDT",
        slippage_bps="2",
        exchange="paper",
        filled_at=_ts(1_732_400_005),
    ),
    ("execution.order.filled", 2): _filled_v2,
    ("execution.order.rejected", 1): lambda: execution_v1.OrderRejected(
        order_id="ord-golden-4",
        signal_id="sig-golden-4",
        symbol="ETH-USD",
        side=SIDE_SELL,
        quantity="0",
        reason=execution_v1.ORDER_REJECT_REASON_INVALID_QUANTITY,
        detail="quantity must be positive",
        exchange="paper",
        rejected_at=_ts(1_732_400_006),
    ),
    ("portfolio.position.opened", 1): lambda: portfolio_pb2.PositionOpened(
        symbol="BTC-USD",
        side=SIDE_BUY,
        quantity="0.5",
        entry_price="101.27",
        order_id="ord-golden-1",
        opened_at=_ts(1_732_400_007),
    ),
    ("portfolio.position.closed", 1): lambda: portfolio_pb2.PositionClosed(
        symbol="BTC-USD",
        side=SIDE_BUY,
        quantity="0.5",
        entry_price="101.27",
        exit_price="103.01",
        realized_pnl="0.87",
        order_id="ord-golden-5",
        closed_at=_ts(1_732_400_008),
    ),
    ("portfolio.pnl.updated", 1): lambda: portfolio_pb2.PnlUpdated(
        realized_pnl="0.87",
        unrealized_pnl="-0.12",
        equity="10000.75",
        peak_equity="10001.2",
        exposure="50.6",
        drawdown="0.000045",
        daily_pnl="0.75",
        open_positions=1,
        symbol="BTC-USD",
        as_of=_ts(1_732_400_009),
    ),
    ("policy.updated", 1): lambda: policy_pb2.PolicyUpdated(
        policy=policy_pb2.Policy(
            version=4,
            mode=policy_pb2.RISK_MODE_DEFENSIVE,
            trading_state=policy_pb2.TRADING_STATE_REDUCING,
            aggressive=_limits(0),
            normal=_limits(1),
            defensive=_limits(2),
            updated_at=_ts(1_732_400_010),
            updated_by="analytics",
            reason="drawdown 15.2% over the 15% limit",
        ),
        previous_version=3,
        changed_fields=["mode", "trading_state"],
        changed_by="analytics",
        reason="drawdown 15.2% over the 15% limit",
        changed_at=_ts(1_732_400_010),
    ),
    ("analytics.stats.updated", 1): lambda: analytics_pb2.StatsUpdated(
        trading_day="2026-11-23",
        trades=12,
        winning_trades=7,
        win_rate="0.5833",
        realized_pnl="14.2",
        max_drawdown="0.021",
        daily_loss="3.1",
        as_of=_ts(1_732_400_011),
    ),
}


def golden_path(event_type: EventType, suffix: str) -> Path:
    return GOLDEN_DIR / f"v{event_type.version}" / f"{event_type.name}{suffix}"


def unset_fields(message: Message, prefix: str = "") -> list[str]:
    """Paths of fields left at their default, recursively: a golden sample must set all."""
    missing = []
    for field in message.DESCRIPTOR.fields:
        path = f"{prefix}{field.name}"
        value = getattr(message, field.name)
        if field.is_repeated:
            if not value:
                missing.append(path)
            elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
                for item in value:
                    missing += unset_fields(item, f"{path}[].")
        elif field.message_type is not None:
            if not message.HasField(field.name):
                missing.append(path)
            elif field.message_type.full_name != "google.protobuf.Timestamp":
                missing += unset_fields(value, f"{path}.")
        elif value == field.default_value:
            missing.append(path)
    return missing


def sample_envelope(event_type: EventType) -> Envelope:
    """The golden envelope of ``event_type``: fixed ids, trace, time and headers."""
    payload = SAMPLES[(event_type.name, event_type.version)]()
    missing = unset_fields(payload)
    if missing:
        raise SystemExit(f"golden sample of {event_type.full_name} leaves unset: {missing}")
    return seal(
        payload,
        producer="golden",
        partition_key="BTC-USD",
        event_id=derive_event_id(_ROOT_EVENT_ID, f"golden:{event_type.name}", event_type.version),
        causation_id=_ROOT_EVENT_ID,
        trace=_TRACE,
        occurred_at=_OCCURRED_AT,
        headers={"recorded-by": "tests/schema/record_golden.py"},
    )


def describe(envelope: Envelope, payload: Message) -> dict[str, object]:
    """The JSON form the tests compare today's decoding with."""
    meta = Envelope()
    meta.CopyFrom(envelope)
    meta.ClearField("payload")
    return {
        "envelope": json_format.MessageToDict(meta),
        "payload_type": payload.DESCRIPTOR.full_name,
        "payload": json_format.MessageToDict(payload),
    }


def main() -> int:
    registry = default_registry()
    unknown = sorted(set(SAMPLES) - {(t.name, t.version) for t in registry})
    if unknown:
        raise SystemExit(f"samples for unregistered event types: {unknown}")
    recorded = kept = 0
    for event_type in registry:
        binary, described = golden_path(event_type, ".binpb"), golden_path(event_type, ".json")
        if binary.exists() or described.exists():
            print(f"kept     {binary.relative_to(GOLDEN_DIR)} (golden files are never rewritten)")
            kept += 1
            continue
        if (event_type.name, event_type.version) not in SAMPLES:
            raise SystemExit(
                f"no golden sample for {event_type.name} v{event_type.version}: add one to "
                f"SAMPLES in {Path(__file__).name}, setting every field"
            )
        envelope = sample_envelope(event_type)
        payload = SAMPLES[(event_type.name, event_type.version)]()
        binary.parent.mkdir(parents=True, exist_ok=True)
        with binary.open("xb") as out:  # "x": fail rather than overwrite, even in a race
            out.write(envelope.SerializeToString(deterministic=True))
        with described.open("x", encoding="utf-8") as out:
            json.dump(describe(envelope, payload), out, indent=2, sort_keys=True)
            out.write("\n")
        print(f"recorded {binary.relative_to(GOLDEN_DIR)}")
        recorded += 1
    print(f"{recorded} recorded, {kept} kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
