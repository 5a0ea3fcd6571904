"""portfolio: positions, exact PnL with fees, equity, drawdown, daily PnL and snapshots."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from google.protobuf.message import Message
from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.execution_pb2 import OrderFilled
from quantum.events.v1.market_pb2 import MarketTick
from quantum.events.v1.portfolio_pb2 import PnlUpdated, PositionClosed, PositionOpened
from quantum.events.v2 import execution_pb2 as execution_v2

from runtime.core.actor import deliver
from runtime.core.failures import InvalidEvent
from runtime.domains.portfolio import Portfolio
from tests.domains.support import at, envelope, run

BUY, SELL = Side.SIDE_BUY, Side.SIDE_SELL


def _fill(
    order: str, side: Side.ValueType, quantity: str, price: str, fee: str = "0", symbol: str = "BTC"
) -> OrderFilled:
    return OrderFilled(
        order_id=order,
        symbol=symbol,
        side=side,
        quantity=quantity,
        price=price,
        fee=fee,
        fee_currency="USD",
    )


def _tick(price: str, symbol: str = "BTC") -> MarketTick:
    return MarketTick(symbol=symbol, price=price, sequence=1)


def _pnl(outputs: list[Message]) -> PnlUpdated:
    last = outputs[-1]
    assert isinstance(last, PnlUpdated)
    return last


def _portfolio() -> Portfolio:
    """Reports on every tick (no interval), so each test sees each move."""
    return Portfolio(starting_equity=Decimal("10000"), tick_pnl_interval=timedelta(0))


async def test_opening_fill_opens_a_position_and_charges_the_fee() -> None:
    pf = _portfolio()
    opened, pnl = await run(pf, _fill("o1", BUY, "2", "100", fee="0.2"), when=at(1))
    assert isinstance(opened, PositionOpened)
    assert (opened.symbol, opened.side, opened.quantity, opened.entry_price, opened.order_id) == (
        "BTC",
        BUY,
        "2",
        "100",
        "o1",
    )
    assert isinstance(pnl, PnlUpdated)
    assert (pnl.realized_pnl, pnl.unrealized_pnl, pnl.equity) == (
        "-0.20000000",
        "0.00000000",
        "9999.80000000",
    )
    assert (pnl.exposure, pnl.open_positions, pnl.symbol) == ("200.00000000", 1, "BTC")
    assert pnl.as_of.ToDatetime() == at(1).replace(tzinfo=None)


async def test_ticks_mark_open_positions_only() -> None:
    pf = _portfolio()
    await run(pf, _fill("o1", BUY, "2", "100"))
    pnl = _pnl(await run(pf, _tick("110")))
    assert (pnl.unrealized_pnl, pnl.equity, pnl.exposure) == (
        "20.00000000",
        "10020.00000000",
        "220.00000000",
    )
    assert await run(pf, _tick("5", symbol="ETH")) == []  # no ETH position: nothing to say


async def test_closing_realises_pnl_with_both_fees() -> None:
    pf = _portfolio()
    await run(pf, _fill("o1", BUY, "2", "100", fee="0.2"))
    closed, pnl = await run(pf, _fill("o2", SELL, "2", "110", fee="0.22"))
    assert isinstance(closed, PositionClosed)
    assert (closed.side, closed.quantity, closed.entry_price, closed.exit_price) == (
        BUY,
        "2",
        "100",
        "110.00000000",
    )
    assert closed.realized_pnl == "19.58000000"  # 2 x 10 - 0.2 - 0.22
    assert isinstance(pnl, PnlUpdated)
    assert (pnl.realized_pnl, pnl.unrealized_pnl, pnl.equity, pnl.open_positions) == (
        "19.58000000",
        "0.00000000",
        "10019.58000000",
        0,
    )


async def test_short_positions_gain_when_the_price_falls() -> None:
    pf = _portfolio()
    await run(pf, _fill("o1", SELL, "1", "100"))
    pnl = _pnl(await run(pf, _tick("90")))
    assert pnl.unrealized_pnl == "10.00000000"
    closed, _ = await run(pf, _fill("o2", BUY, "1", "95"))
    assert isinstance(closed, PositionClosed)
    assert closed.realized_pnl == "5.00000000"


async def test_adding_averages_the_entry_and_partial_close_keeps_it() -> None:
    pf = _portfolio()
    await run(pf, _fill("o1", BUY, "1", "100"))
    [pnl] = await run(pf, _fill("o2", BUY, "3", "120"))  # no new position event
    assert pf.ledger.positions["BTC"].entry_price == Decimal("115")
    assert pnl.open_positions == 1
    [pnl] = await run(pf, _fill("o3", SELL, "2", "125"))
    assert pf.ledger.positions["BTC"].quantity == Decimal(2)
    assert pnl.realized_pnl == "20.00000000"  # 2 x (125 - 115)
    closed, _ = await run(pf, _fill("o4", SELL, "2", "105"))
    assert isinstance(closed, PositionClosed)
    assert (closed.quantity, closed.exit_price, closed.realized_pnl) == (
        "4",
        "115.00000000",
        "0.00000000",
    )


async def test_a_reversing_fill_closes_then_opens() -> None:
    pf = _portfolio()
    await run(pf, _fill("o1", BUY, "1", "100", fee="1"))
    closed, opened, pnl = await run(pf, _fill("o2", SELL, "3", "110", fee="3"))
    assert isinstance(closed, PositionClosed)
    assert isinstance(opened, PositionOpened)
    assert closed.realized_pnl == "8.00000000"  # 10 - 1 (open fee) - 1 (its share of 3)
    assert (opened.side, opened.quantity, opened.entry_price) == (SELL, "2", "110")
    assert isinstance(pnl, PnlUpdated)
    assert pnl.realized_pnl == "6.00000000"


async def test_peak_equity_and_drawdown() -> None:
    pf = _portfolio()
    await run(pf, _fill("o1", BUY, "10", "100"))
    peak = _pnl(await run(pf, _tick("200")))
    assert (peak.equity, peak.peak_equity, peak.drawdown) == (
        "11000.00000000",
        "11000.00000000",
        "0.00000000",
    )
    low = _pnl(await run(pf, _tick("90")))
    assert low.equity == "9900.00000000"
    assert low.peak_equity == "11000.00000000"
    assert low.drawdown == "0.10000000"  # 1,100 / 11,000


async def test_daily_pnl_restarts_at_the_utc_day_boundary() -> None:
    pf = _portfolio()
    await run(pf, _fill("o1", BUY, "10", "100"), when=at(0))
    assert _pnl(await run(pf, _tick("110"), when=at(60))).daily_pnl == "100.00000000"
    next_day = at(0) + timedelta(days=1)
    pnl = _pnl(await run(pf, _tick("105"), when=next_day))
    assert pnl.daily_pnl == "-50.00000000"  # from 10,100 at the end of day one to 10,050


async def test_a_fill_is_applied_once() -> None:
    pf = _portfolio()
    await run(pf, _fill("o1", BUY, "1", "100"))
    assert await run(pf, _fill("o1", BUY, "1", "100")) == []
    assert pf.ledger.positions["BTC"].quantity == Decimal(1)


async def test_v2_partial_fills_are_applied_in_order() -> None:
    pf = _portfolio()
    fill = execution_v2.OrderFilled(order_id="o1", symbol="BTC", side=BUY)
    fill.fills.add(quantity="1", price="100", fee="0.1", fee_currency="USD")
    fill.fills.add(quantity="1", price="102", fee="0.1", fee_currency="USD")
    opened, pnl = await run(pf, fill)
    assert isinstance(opened, PositionOpened)
    assert opened.quantity == "1"
    assert pf.ledger.positions["BTC"].entry_price == Decimal(101)
    assert isinstance(pnl, PnlUpdated)
    assert pnl.realized_pnl == "-0.20000000"


async def test_a_malformed_fill_fails_loudly() -> None:
    with pytest.raises(InvalidEvent, match=r"fills\[0\]\.quantity"):
        await run(_portfolio(), _fill("o1", BUY, "x", "100"))


@pytest.mark.parametrize("bad_price", ["0", "NaN", "x"])
async def test_a_fill_with_one_bad_part_changes_nothing_and_fails_again_on_retry(
    bad_price: str,
) -> None:
    pf = _portfolio()
    fill = execution_v2.OrderFilled(order_id="o1", symbol="BTC", side=BUY)
    fill.fills.add(quantity="1", price="100", fee="0.1", fee_currency="USD")
    fill.fills.add(quantity="1", price=bad_price, fee="0.1", fee_currency="USD")
    event = envelope(fill, when=at(1))
    for _ in range(2):  # the runner's retry of the same event fails the same way
        with pytest.raises(InvalidEvent, match=r"fills\[1\]\.price"):
            await deliver(pf, event)
        assert pf.ledger == _portfolio().ledger  # nothing half-applied, not even the day
    assert not pf.ledger.already_applied("o1")


async def test_snapshot_and_restore_keep_positions() -> None:
    pf = _portfolio()
    await run(pf, _fill("o1", BUY, "2", "100", fee="0.2"))
    await run(pf, _tick("105"))
    again = _portfolio()
    again.restore_state(pf.snapshot_state())
    assert again.ledger == pf.ledger
    closed, _ = await run(again, _fill("o2", SELL, "2", "110"))
    assert isinstance(closed, PositionClosed)
    assert closed.realized_pnl == "19.80000000"


async def test_tick_pnl_interval_bounds_updates() -> None:
    pf = Portfolio(tick_pnl_interval=timedelta(seconds=1))
    await run(pf, _fill("o1", BUY, "1", "100"), when=at(0))
    assert len(await run(pf, _tick("101"), when=at(0.1))) == 1
    assert await run(pf, _tick("102"), when=at(0.5)) == []
    assert len(await run(pf, _tick("103"), when=at(1.1))) == 1
