"""execution: the paper exchange's fills and the one-order-per-signal guarantee."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.execution_pb2 import (
    OrderFilled,
    OrderRejected,
    OrderRejectReason,
    OrderSubmitted,
)
from quantum.events.v1.market_pb2 import MarketTick
from quantum.events.v1.risk_pb2 import SignalApproved

from runtime.core.actor import deliver
from runtime.core.envelope import open_payload
from runtime.core.failures import InvalidEvent
from runtime.domains.execution import (
    Execution,
    Fill,
    MarketOrder,
    PaperExchange,
    Refusal,
    order_id_for,
)
from tests.domains.support import at, envelope, run


def _approved(
    signal_id: str = "sig-1",
    side: Side.ValueType = Side.SIDE_BUY,
    quantity: str = "0.5",
    reduce_only: bool = False,
) -> SignalApproved:
    return SignalApproved(
        signal_id=signal_id,
        symbol="BTC-USD",
        side=side,
        quantity=quantity,
        reference_price="50000",
        reduce_only=reduce_only,
    )


def _execution() -> Execution:
    return Execution(PaperExchange(slippage_bps=Decimal("2"), fee_bps=Decimal("10")))


async def _with_price(price: str = "50000") -> Execution:
    execution = _execution()
    assert await run(execution, MarketTick(symbol="BTC-USD", price=price, sequence=1)) == []
    return execution


async def test_buy_fills_at_last_price_plus_slippage_with_fee() -> None:
    execution = await _with_price("50000")
    submitted, filled = await run(execution, _approved(), when=at(3))
    assert isinstance(submitted, OrderSubmitted)
    assert isinstance(filled, OrderFilled)
    assert submitted.order_id == filled.order_id == order_id_for("sig-1") == "ord-sig-1"
    assert (submitted.order_type, submitted.exchange, submitted.quantity) == (
        "market",
        "paper",
        "0.5",
    )
    # 50,000 x (1 + 2 bps) = 50,010; fee 10 bps of 0.5 x 50,010 = 25.005
    assert (filled.price, filled.quantity, filled.fee) == (
        "50010.00000000",
        "0.5",
        "25.00500000",
    )
    assert (filled.fee_currency, filled.slippage_bps, filled.signal_id) == ("USD", "2", "sig-1")
    assert filled.filled_at.ToDatetime() == at(3).replace(tzinfo=None)


async def test_sell_fills_below_the_last_price() -> None:
    execution = await _with_price("50000")
    _, filled = await run(execution, _approved(side=Side.SIDE_SELL))
    assert isinstance(filled, OrderFilled)
    assert filled.price == "49990.00000000"


async def test_fills_follow_the_latest_tick() -> None:
    execution = await _with_price("50000")
    await run(execution, MarketTick(symbol="BTC-USD", price="40000", sequence=2))
    _, filled = await run(execution, _approved())
    assert isinstance(filled, OrderFilled)
    assert filled.price == "40008.00000000"


async def test_fills_at_the_last_tick_as_of_the_orders_event_time() -> None:
    execution = _execution()
    await run(execution, MarketTick(symbol="BTC-USD", price="50000", sequence=1), when=at(0))
    await run(execution, MarketTick(symbol="BTC-USD", price="60000", sequence=2), when=at(5))
    _, filled = await run(execution, _approved(), when=at(1))  # decided before the 60,000
    assert isinstance(filled, OrderFilled)
    assert filled.price == "50010.00000000"


async def test_before_its_decision_tick_arrives_an_order_fills_at_its_reference_price() -> None:
    execution = _execution()
    await run(execution, MarketTick(symbol="BTC-USD", price="40000", sequence=1), when=at(0))
    approved = _approved()
    approved.reference_price = "45000"  # the tick at t=1 that execution has not seen yet
    _, filled = await run(execution, approved, when=at(1))
    assert isinstance(filled, OrderFilled)
    assert filled.price == "45009.00000000"


def test_a_late_tick_takes_its_place_in_time() -> None:
    paper = PaperExchange(slippage_bps=Decimal(0))
    paper.on_price("X", Decimal(10), at(0))
    paper.on_price("X", Decimal(30), at(2))
    paper.on_price("X", Decimal(20), at(1))  # arrives late
    order = MarketOrder("o", "X", Side.SIDE_BUY, Decimal(1), False)
    fills = [paper.fill(order, at(t)) for t in (0, 1, 1.5, 2)]
    assert [f.price for f in fills if isinstance(f, Fill)] == [10, 20, 20, 30]
    assert paper.last_price("X") == 30


async def test_no_tick_and_no_reference_price_means_submitted_then_rejected() -> None:
    execution = _execution()
    approved = _approved()
    approved.reference_price = ""
    submitted, rejected = await run(execution, approved)
    assert isinstance(submitted, OrderSubmitted)
    assert isinstance(rejected, OrderRejected)
    assert rejected.reason == OrderRejectReason.ORDER_REJECT_REASON_NO_MARKET_PRICE
    assert "BTC-USD" in rejected.detail
    assert rejected.order_id == "ord-sig-1"


async def test_a_non_positive_quantity_is_invalid_and_submits_nothing() -> None:
    execution = await _with_price()
    with pytest.raises(InvalidEvent, match="quantity"):
        await run(execution, _approved(quantity="0"))
    assert execution.ordered == {}
    assert execution.filled == 0


async def test_a_second_approval_of_one_signal_submits_nothing() -> None:
    execution = await _with_price()
    assert len(await run(execution, _approved())) == 2
    assert await run(execution, _approved()) == []  # same signal in another event
    assert execution.filled == 1


async def test_a_retried_approval_event_repeats_its_outputs_without_a_second_order() -> None:
    execution = await _with_price("50000")
    event = envelope(_approved())
    first = await deliver(execution, event)
    await run(execution, MarketTick(symbol="BTC-USD", price="60000", sequence=2))
    again = await deliver(execution, event)  # e.g. a retry after its publish failed
    assert again == first  # same ids, same fill price: downstream skips them
    assert execution.filled == 1


async def test_the_ordered_signals_survive_a_restart() -> None:
    execution = await _with_price()
    await run(execution, _approved("sig-A"))
    restarted = await _with_price()
    restarted.restore_state(execution.snapshot_state())
    assert restarted.held == {"BTC-USD": Decimal("0.5")}
    assert await run(restarted, _approved("sig-A")) == []
    outputs = await run(restarted, _approved("sig-B"))
    assert [type(o) for o in outputs] == [OrderSubmitted, OrderFilled]


async def test_outputs_are_deterministic_for_the_same_input() -> None:
    event = envelope(_approved())
    a, b = await _with_price(), await _with_price()
    assert await deliver(a, event) == await deliver(b, event)


def test_paper_exchange_refuses_negative_costs() -> None:
    with pytest.raises(ValueError, match="slippage_bps"):
        PaperExchange(slippage_bps=Decimal(-1))


def test_paper_fill_is_exact() -> None:
    paper = PaperExchange(slippage_bps=Decimal("1"), fee_bps=Decimal("7.5"))
    paper.on_price("ETH-USD", Decimal("3000.01"), at(0))
    fill = paper.fill(MarketOrder("o", "ETH-USD", Side.SIDE_BUY, Decimal("0.333333"), False), at(1))
    assert isinstance(fill, Fill)
    assert fill.price == Decimal("3000.31000100")
    assert fill.fee == Decimal("0.75007675")


async def test_deliver_outputs_decode() -> None:
    execution = await _with_price()
    outs = await deliver(execution, envelope(_approved()))
    assert [o.event_type for o in outs] == ["execution.order.submitted", "execution.order.filled"]
    assert all(open_payload(o) for o in outs)


async def test_a_reduce_only_order_is_cut_to_the_filled_position() -> None:
    execution = await _with_price()
    await run(execution, _approved("sig-open", quantity="0.3"))
    submitted, filled = await run(
        execution, _approved("sig-close", Side.SIDE_SELL, quantity="0.5", reduce_only=True)
    )
    assert isinstance(submitted, OrderSubmitted)
    assert submitted.reduce_only
    assert submitted.quantity == "0.3"
    assert isinstance(filled, OrderFilled)
    assert filled.quantity == "0.3"
    assert execution.held == {"BTC-USD": Decimal(0)}


@pytest.mark.parametrize("side", [Side.SIDE_BUY, Side.SIDE_SELL])
async def test_a_reduce_only_order_never_opens_or_grows_a_position(side: int) -> None:
    execution = await _with_price()
    if side == Side.SIDE_BUY:
        await run(execution, _approved("sig-open", quantity="0.3"))  # long: BUY would grow it
    _, rejected = await run(execution, _approved("sig-r", side, reduce_only=True))
    assert isinstance(rejected, OrderRejected)
    assert rejected.reason == OrderRejectReason.ORDER_REJECT_REASON_EXCHANGE_REFUSED
    assert "would open or grow" in rejected.detail


class _FailsOnce:
    """A paper exchange whose first submit fails the way a lost connection would."""

    name = "paper"

    def __init__(self) -> None:
        self.paper = _execution().exchange
        self.submits: list[MarketOrder] = []

    def on_price(self, symbol: str, price: Decimal, at: datetime) -> None:
        self.paper.on_price(symbol, price, at)

    async def submit(self, order: MarketOrder, at: datetime) -> Fill | Refusal:
        self.submits.append(order)
        if len(self.submits) == 1:
            raise ConnectionError("exchange unreachable")
        return await self.paper.submit(order, at)


async def test_a_submit_that_raises_is_submitted_again_on_the_retry() -> None:
    exchange = _FailsOnce()
    execution = Execution(exchange)
    await run(execution, MarketTick(symbol="BTC-USD", price="50000", sequence=1))
    event = envelope(_approved())
    with pytest.raises(ConnectionError):
        await deliver(execution, event)
    assert "sig-1" not in execution.ordered
    retried = await deliver(execution, event)  # the runner retries the same event
    assert [o.event_type for o in retried] == [
        "execution.order.submitted",
        "execution.order.filled",
    ]
    assert [o.order_id for o in exchange.submits] == ["ord-sig-1", "ord-sig-1"]
    # the same outputs, ids included, as if the first attempt had never failed
    assert retried == await deliver(await _with_price(), event)
    assert await deliver(execution, event) == retried  # and a further retry repeats them
    assert len(exchange.submits) == 2
