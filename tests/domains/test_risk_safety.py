"""risk_safety: every pre-trade check, the order size, trading states and live policy changes."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from google.protobuf.message import Message
from quantum.events.v1.ai_pb2 import SignalGenerated
from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.policy_pb2 import RiskMode as RiskModePb
from quantum.events.v1.portfolio_pb2 import PnlUpdated, PositionClosed, PositionOpened
from quantum.events.v1.risk_pb2 import RejectReason, SignalApproved, SignalRejected
from quantum.events.v2 import ai_pb2 as ai_v2

from runtime.core.policy import RiskMode, TradingState
from runtime.domains.risk_safety import RiskSafety
from tests.domains.support import StubPolicyStore, at, policy, run

BUY, SELL = Side.SIDE_BUY, Side.SIDE_SELL


def _signal(
    symbol: str = "BTC-USD",
    side: Side.ValueType = BUY,
    confidence: str = "0.80",
    price: str = "50000",
    n: int = 1,
) -> SignalGenerated:
    return SignalGenerated(
        signal_id=f"sig-{n}",
        symbol=symbol,
        side=side,
        confidence=confidence,
        model_id="test/1",
        reference_price=price,
    )


def _opened(symbol: str, side: Side.ValueType, quantity: str, price: str) -> PositionOpened:
    return PositionOpened(
        symbol=symbol, side=side, quantity=quantity, entry_price=price, order_id="o"
    )


async def _decide(
    risk: RiskSafety, signal: SignalGenerated, when: datetime | None = None
) -> Message:
    [out] = await run(risk, signal, when=when)
    return out


def _risk(**normal: object) -> tuple[RiskSafety, StubPolicyStore]:
    store = StubPolicyStore(policy(**normal))
    return RiskSafety(store, starting_equity=Decimal("100000")), store


# --- approvals ---------------------------------------------------------------------------


async def test_approval_sizes_the_order_from_risk_per_trade() -> None:
    risk, _ = _risk()
    out = await _decide(risk, _signal(price="50000"), at(0))
    assert isinstance(out, SignalApproved)
    # 1% of 100,000 equity = 1,000 notional; at 50,000 that is 0.02
    assert (out.quantity, out.notional, out.reference_price) == (
        "0.020000",
        "1000.00000000",
        "50000",
    )
    assert (out.signal_id, out.symbol, out.side, out.reduce_only) == (
        "sig-1",
        "BTC-USD",
        BUY,
        False,
    )
    assert (out.policy_version, out.mode) == (1, RiskModePb.RISK_MODE_NORMAL)
    assert out.decided_at.ToDatetime() == at(0).replace(tzinfo=None)


async def test_order_size_is_capped_by_max_position_notional() -> None:
    risk, _ = _risk(max_position_notional=Decimal("600"))
    out = await _decide(risk, _signal(price="50000"))
    assert isinstance(out, SignalApproved)
    assert out.quantity == "0.012000"  # 600 / 50,000


async def test_order_size_is_capped_by_leverage_headroom() -> None:
    risk, _ = _risk(max_leverage=Decimal("1"), risk_per_trade_pct=Decimal("50"))
    await run(risk, _opened("ETH-USD", BUY, "30", "3000"))  # 90,000 exposure
    out = await _decide(risk, _signal(price="50000"))
    assert isinstance(out, SignalApproved)
    assert out.quantity == "0.200000"  # 10,000 of room / 50,000


async def test_opposite_signal_closes_the_position_even_when_reducing() -> None:
    risk, _ = _risk(state=TradingState.REDUCING)
    await run(risk, _opened("BTC-USD", BUY, "0.5", "50000"))
    out = await _decide(risk, _signal(side=SELL, price="51000"))
    assert isinstance(out, SignalApproved)
    assert (out.quantity, out.reduce_only, out.side) == ("0.5", True, SELL)


async def test_closing_is_allowed_for_a_symbol_no_longer_allowed() -> None:
    risk, _ = _risk(allowed_symbols=frozenset({"ETH-USD"}))
    await run(risk, _opened("BTC-USD", SELL, "0.5", "50000"))
    out = await _decide(risk, _signal(side=BUY))
    assert isinstance(out, SignalApproved)
    assert out.reduce_only


async def test_a_closed_position_no_longer_counts() -> None:
    risk, _ = _risk(max_open_positions=1)
    await run(risk, _opened("ETH-USD", BUY, "1", "3000"))
    await run(risk, PositionClosed(symbol="ETH-USD", side=BUY, quantity="1"))
    out = await _decide(risk, _signal())
    assert isinstance(out, SignalApproved)


async def test_takes_a_v2_signal_too() -> None:
    risk, _ = _risk()
    v2 = ai_v2.SignalGenerated(
        signal_id="sig-v2",
        symbol="BTC-USD",
        side=BUY,
        reference_price="50000",
        confidence=ai_v2.Confidence(value="0.9", model_id="m/2"),
    )
    out = await _decide(risk, v2)  # type: ignore[arg-type]
    assert isinstance(out, SignalApproved)
    assert out.signal_id == "sig-v2"


# --- every rejection reason --------------------------------------------------------------

Scenario = Callable[[], Awaitable[tuple[Message, str, str]]]
SCENARIOS: dict[int, Scenario] = {}


def scenario(reason: int) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[reason] = fn
        return fn

    return register


@scenario(RejectReason.REJECT_REASON_TRADING_HALTED)
async def _halted() -> tuple[Message, str, str]:
    risk, _ = _risk(state=TradingState.HALTED)
    await run(risk, _opened("BTC-USD", BUY, "0.5", "50000"))
    # even a closing order is refused: HALTED means nothing goes out
    return await _decide(risk, _signal(side=SELL)), "HALTED", "HALTED"


@scenario(RejectReason.REJECT_REASON_NO_PRICE)
async def _no_price() -> tuple[Message, str, str]:
    risk, _ = _risk()
    return await _decide(risk, _signal(price="")), "> 0", "(empty)"


@scenario(RejectReason.REJECT_REASON_CONFIDENCE_TOO_LOW)
async def _low_confidence() -> tuple[Message, str, str]:
    risk, _ = _risk()
    return await _decide(risk, _signal(confidence="0.59")), "0.60", "0.59"


@scenario(RejectReason.REJECT_REASON_REDUCING_ONLY)
async def _reducing() -> tuple[Message, str, str]:
    risk, _ = _risk(state=TradingState.REDUCING)
    return await _decide(risk, _signal()), "REDUCING", "increases risk"


@scenario(RejectReason.REJECT_REASON_SYMBOL_NOT_ALLOWED)
async def _symbol() -> tuple[Message, str, str]:
    risk, _ = _risk()
    return await _decide(risk, _signal(symbol="DOGE-USD")), "BTC-USD,ETH-USD,SOL-USD", "DOGE-USD"


@scenario(RejectReason.REJECT_REASON_DAILY_LOSS_LIMIT_REACHED)
async def _daily_loss() -> tuple[Message, str, str]:
    risk, _ = _risk()
    await run(risk, PnlUpdated(equity="97000", daily_pnl="-3000"))  # 3% of 100,000
    return await _decide(risk, _signal()), "3", "3.0000"


@scenario(RejectReason.REJECT_REASON_MAX_OPEN_POSITIONS_REACHED)
async def _open_positions() -> tuple[Message, str, str]:
    risk, _ = _risk(max_open_positions=1)
    await run(risk, _opened("ETH-USD", BUY, "1", "3000"))
    return await _decide(risk, _signal()), "1", "1"


@scenario(RejectReason.REJECT_REASON_MAX_POSITION_NOTIONAL_EXCEEDED)
async def _notional() -> tuple[Message, str, str]:
    risk, _ = _risk(max_position_notional=Decimal("20000"))
    await run(risk, _opened("BTC-USD", BUY, "0.5", "40000"))
    # marked at the signal's price: 0.5 x 50,000 = 25,000 held, over the 20,000 maximum
    return await _decide(risk, _signal(side=BUY)), "20000", "25000.00000000"


@scenario(RejectReason.REJECT_REASON_MAX_LEVERAGE_EXCEEDED)
async def _leverage() -> tuple[Message, str, str]:
    risk, _ = _risk(max_leverage=Decimal("1"), max_position_notional=Decimal("200000"))
    await run(risk, _opened("ETH-USD", BUY, "40", "3000"))  # 120,000 on 100,000 equity
    return await _decide(risk, _signal()), "1", "1.2000"


@scenario(RejectReason.REJECT_REASON_ORDER_RATE_EXCEEDED)
async def _rate() -> tuple[Message, str, str]:
    risk, _ = _risk(max_orders_per_second=2)
    for n, symbol in enumerate(["BTC-USD", "ETH-USD"]):
        out = await _decide(risk, _signal(symbol=symbol, n=n), at(0.1 * n))
        assert isinstance(out, SignalApproved)
    return await _decide(risk, _signal(symbol="SOL-USD", n=3), at(0.9)), "2", "3"


@scenario(RejectReason.REJECT_REASON_ORDER_SIZE_ZERO)
async def _size_zero() -> tuple[Message, str, str]:
    risk, _ = _risk(risk_per_trade_pct=Decimal("0.00001"))  # 0.01 at 50,000
    return await _decide(risk, _signal()), "0.000001", "0.000000200000"


def test_every_reject_reason_has_a_scenario() -> None:
    reasons = {v for v in RejectReason.values() if v != RejectReason.REJECT_REASON_UNSPECIFIED}
    assert set(SCENARIOS) == reasons


@pytest.mark.parametrize("reason", sorted(SCENARIOS), ids=RejectReason.Name)
async def test_rejection_carries_reason_limit_and_actual(reason: int) -> None:
    out, limit, actual = await SCENARIOS[reason]()
    assert isinstance(out, SignalRejected), out
    assert RejectReason.Name(out.reason) == RejectReason.Name(reason)
    assert (out.limit, out.actual) == (limit, actual)
    assert out.detail
    assert out.policy_version == 1
    assert out.signal_id


async def test_rate_limit_window_moves_with_event_time() -> None:
    risk, _ = _risk(max_orders_per_second=1)
    assert isinstance(await _decide(risk, _signal(n=1), at(0)), SignalApproved)
    assert isinstance(await _decide(risk, _signal("ETH-USD", n=2), at(0.5)), SignalRejected)
    assert isinstance(await _decide(risk, _signal("ETH-USD", n=3), at(1.0)), SignalApproved)


async def test_an_approval_counts_as_a_holding_before_its_fill_is_confirmed() -> None:
    risk, _ = _risk(max_open_positions=1)
    assert isinstance(await _decide(risk, _signal("ETH-USD", n=1), at(0)), SignalApproved)
    out = await _decide(risk, _signal("BTC-USD", n=2), at(5))
    assert isinstance(out, SignalRejected)
    assert out.reason == RejectReason.REJECT_REASON_MAX_OPEN_POSITIONS_REACHED


# --- the policy is live ------------------------------------------------------------------


async def test_switch_to_defensive_changes_the_next_decision() -> None:
    risk, store = _risk()
    first = await _decide(risk, _signal("ETH-USD", confidence="0.70", price="3000", n=1), at(0))
    assert isinstance(first, SignalApproved)
    assert first.quantity == "0.333333"  # NORMAL: 1% of equity
    await store.switch_mode(RiskMode.DEFENSIVE, changed_by="test", reason="test")
    second = await _decide(risk, _signal("BTC-USD", confidence="0.70", n=2), at(2))
    assert isinstance(second, SignalRejected)
    assert second.reason == RejectReason.REJECT_REASON_CONFIDENCE_TOO_LOW
    assert (second.limit, second.mode, second.policy_version) == (
        "0.75",
        RiskModePb.RISK_MODE_DEFENSIVE,
        2,
    )
    third = await _decide(risk, _signal("BTC-USD", confidence="0.80", n=3), at(3))
    assert isinstance(third, SignalApproved)
    assert third.quantity == "0.010000"  # DEFENSIVE: 0.5% of equity


async def test_yesterdays_loss_does_not_block_today() -> None:
    risk, _ = _risk()
    await run(risk, PnlUpdated(equity="97000", daily_pnl="-3000"), when=at(0))
    out = await _decide(risk, _signal(), at(0) + timedelta(days=1))
    assert isinstance(out, SignalApproved)


async def test_equity_from_pnl_updates_drives_the_size() -> None:
    risk, _ = _risk()
    await run(risk, PnlUpdated(equity="200000", daily_pnl="0"))
    out = await _decide(risk, _signal(price="50000"))
    assert isinstance(out, SignalApproved)
    assert out.quantity == "0.040000"


async def test_snapshot_and_restore_keep_the_book() -> None:
    risk, store = _risk(max_open_positions=1)
    await run(risk, _opened("ETH-USD", BUY, "1", "3000"))
    again = RiskSafety(store)
    data = risk.snapshot_state()
    again.restore_state(data)
    out = await _decide(again, _signal())
    assert isinstance(out, SignalRejected)
    assert out.reason == RejectReason.REJECT_REASON_MAX_OPEN_POSITIONS_REACHED
    assert dataclasses.asdict(again.book.holdings["ETH-USD"]) == {
        "side": BUY,
        "quantity": Decimal(1),
    }
