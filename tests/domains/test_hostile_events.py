"""Every domain checks each event at its door: a hostile one raises InvalidEvent and changes
nothing (the delivery loop dead-letters it with reason ``invalid``).

Each test primes a domain with valid events, then feeds it one hostile variation at a time
and compares the domain's whole state before and after.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from google.protobuf.message import Message
from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.market_pb2 import MarketTick
from quantum.events.v1.portfolio_pb2 import PnlUpdated, PositionClosed, PositionOpened
from quantum.events.v1.risk_pb2 import SignalApproved
from quantum.events.v2 import ai_pb2 as ai_v2
from quantum.events.v2 import execution_pb2 as execution_v2
from quantum.events.v2.ai_pb2 import SignalGenerated

from runtime.core.actor import Actor, deliver
from runtime.core.failures import InvalidEvent
from runtime.domains.ai_engine import AiEngine, EmaCrossoverModel
from runtime.domains.analytics import Analytics
from runtime.domains.execution import Execution, PaperExchange
from runtime.domains.portfolio import Portfolio
from runtime.domains.risk_safety import RiskSafety
from tests.domains.support import StubPolicyStore, at, envelope

# Text no strict decimal field accepts.
BAD_NUMBERS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1_000",
    " 5",
    "5 ",
    "5\n",
    "\u0661\u0662",  # Arabic-Indic digits
    "\uff15",  # full-width 5
    "1e999999999",
    "1e-999",
    "x",
]
# ... and a price or quantity must also be > 0.
BAD_POSITIVES = [*BAD_NUMBERS, "0", "-1", "", "1e13"]
BAD_SYMBOLS = ["", "BTC USD", "BTC-USD\n", "\uff22TC", "B" * 65]
BAD_SIDES = [Side.SIDE_UNSPECIFIED, 7]
YEAR_ONE = datetime(1, 1, 1, tzinfo=UTC)


def fingerprint(value: Any, depth: int = 0) -> Any:
    """Everything an actor holds, as comparable plain data (a domain object's insides too)."""
    if depth > 8:
        return repr(value)
    if isinstance(value, Message):
        return value.SerializeToString(deterministic=True)
    if isinstance(value, dict):
        return sorted((repr(k), fingerprint(v, depth + 1)) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset) or type(value).__name__ == "deque":
        items = [fingerprint(v, depth + 1) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    if type(value).__module__.startswith("runtime.domains"):
        fields = dict(getattr(value, "__dict__", {}))
        for name in getattr(type(value), "__slots__", ()):
            if hasattr(value, name):
                fields[name] = getattr(value, name)
        fields.pop("policy", None)  # the stub store is not the domain's state
        return (type(value).__name__, fingerprint(fields, depth + 1))
    return repr(value)


async def assert_refused(actor: Actor, payload: Message, *, when: datetime | None = None) -> None:
    snapshot = actor.snapshot_state()  # first: execution caches its snapshot
    before = fingerprint(actor)
    with pytest.raises(InvalidEvent) as caught:
        await deliver(actor, envelope(payload, when=when or at(100)))
    assert caught.value.field, caught.value
    assert fingerprint(actor) == before
    assert actor.snapshot_state() == snapshot


def variations(make: Callable[[], Message], field: str, values: list[Any]) -> list[Message]:
    found = []
    for value in values:
        message = make()
        target = message
        *path, last = field.split(".")
        for part in path:
            target = getattr(target, part)[0] if part == "fills" else getattr(target, part)
        setattr(target, last, value)
        found.append(message)
    return found


def year_one(make: Callable[[], Message], field: str) -> Message:
    message = make()
    getattr(message, field).seconds = int(
        (YEAR_ONE - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()
    )
    return message


# -- ai_engine ---------------------------------------------------------------------------------


def _tick(price: str = "100", symbol: str = "BTC-USD", sequence: int = 50) -> MarketTick:
    return MarketTick(
        symbol=symbol, price=price, bid="99", ask="101", volume="1", sequence=sequence
    )


async def _primed_engine() -> AiEngine:
    engine = AiEngine(EmaCrossoverModel(fast=2, slow=3, warmup=3))
    for i, price in enumerate(["100", "101", "102", "103"]):
        await deliver(engine, envelope(_tick(price, sequence=i + 1), when=at(i)))
    return engine


def _tick_variations() -> list[Message]:
    return [
        *variations(_tick, "price", BAD_POSITIVES),
        *variations(_tick, "bid", [*BAD_NUMBERS, "0", "-1"]),
        *variations(_tick, "ask", [*BAD_NUMBERS, "0", "-1"]),
        *variations(_tick, "volume", [*BAD_NUMBERS, "-1"]),
        *variations(_tick, "symbol", BAD_SYMBOLS),
        year_one(_tick, "observed_at"),
    ]


@pytest.mark.parametrize("tick", _tick_variations(), ids=repr)
async def test_ai_engine_refuses_hostile_ticks(tick: MarketTick) -> None:
    await assert_refused(await _primed_engine(), tick)


async def test_ai_engine_refuses_an_event_time_of_year_one() -> None:
    await assert_refused(await _primed_engine(), _tick(), when=YEAR_ONE)


# -- risk_safety -------------------------------------------------------------------------------


def _signal() -> SignalGenerated:
    return SignalGenerated(
        signal_id="sig-1",
        symbol="BTC-USD",
        side=Side.SIDE_BUY,
        reference_price="100",
        confidence=ai_v2.Confidence(value="0.9", model_id="m"),
    )


def _opened(symbol: str = "ETH-USD") -> PositionOpened:
    return PositionOpened(
        symbol=symbol, side=Side.SIDE_BUY, quantity="2", entry_price="50", order_id="o1"
    )


def _pnl() -> PnlUpdated:
    return PnlUpdated(equity="100000", daily_pnl="-10", drawdown="0.01", realized_pnl="1")


def _closed() -> PositionClosed:
    return PositionClosed(
        symbol="ETH-USD",
        side=Side.SIDE_BUY,
        quantity="2",
        entry_price="50",
        exit_price="55",
        realized_pnl="10",
        order_id="o2",
    )


async def _primed_risk() -> RiskSafety:
    risk = RiskSafety(StubPolicyStore())
    await deliver(risk, envelope(_opened(), when=at(1)))
    await deliver(risk, envelope(_pnl(), when=at(2)))
    await deliver(risk, envelope(_signal(), when=at(3)))
    return risk


def _risk_variations() -> list[Message]:
    return [
        *variations(_signal, "confidence.value", [*BAD_NUMBERS, "", "1.5", "-0.1"]),
        *variations(_signal, "reference_price", BAD_NUMBERS),
        *variations(_signal, "symbol", BAD_SYMBOLS),
        *variations(_signal, "side", BAD_SIDES),
        *variations(_signal, "signal_id", ["", "sig 1", "sig-1\n", "s" * 129]),
        year_one(_signal, "generated_at"),
        *variations(_pnl, "equity", [*BAD_NUMBERS, "", "1e16"]),
        *variations(_pnl, "daily_pnl", [*BAD_NUMBERS, ""]),
        *variations(_opened, "quantity", BAD_POSITIVES),
        *variations(_opened, "entry_price", BAD_POSITIVES),
        *variations(_opened, "side", BAD_SIDES),
        *variations(_opened, "symbol", [*BAD_SYMBOLS, "DOGE-USD"]),  # DOGE: on no allow-list
        *variations(_closed, "side", BAD_SIDES),
        *variations(_closed, "symbol", BAD_SYMBOLS),
    ]


@pytest.mark.parametrize("event", _risk_variations(), ids=repr)
async def test_risk_safety_refuses_hostile_events(event: Message) -> None:
    await assert_refused(await _primed_risk(), event)


async def test_risk_safety_refuses_an_event_time_of_year_one() -> None:
    for event in (_signal(), _pnl(), _opened(), _closed()):
        await assert_refused(await _primed_risk(), event, when=YEAR_ONE)


async def test_opens_of_symbols_on_no_allow_list_never_fill_the_open_position_slots() -> None:
    risk = RiskSafety(StubPolicyStore())
    for n in range(6):  # NORMAL allows 5 open positions
        with pytest.raises(InvalidEvent, match="allow-list"):
            await deliver(risk, envelope(_opened(f"FORGED{n}-USD"), when=at(n)))
    assert risk.book.open_positions == 0
    [approved] = await deliver(risk, envelope(_signal(), when=at(10)))
    assert approved.event_type == "risk.signal.approved"


# -- execution ---------------------------------------------------------------------------------


def _approved() -> SignalApproved:
    return SignalApproved(
        signal_id="sig-9",
        symbol="BTC-USD",
        side=Side.SIDE_BUY,
        quantity="0.5",
        notional="50",
        reference_price="100",
    )


async def _primed_execution() -> Execution:
    execution = Execution(PaperExchange())
    await deliver(execution, envelope(_tick("100", sequence=1), when=at(1)))
    await deliver(execution, envelope(SignalApproved(**_fields(_approved(), signal_id="sig-1"))))
    return execution


def _fields(message: SignalApproved, **overrides: Any) -> dict[str, Any]:
    fields = {f.name: v for f, v in message.ListFields()}
    fields.update(overrides)
    return fields


def _execution_variations() -> list[Message]:
    return [
        *variations(_approved, "quantity", BAD_POSITIVES),
        *variations(_approved, "reference_price", [*BAD_NUMBERS, "0", "-1"]),
        *variations(_approved, "notional", [*BAD_NUMBERS, "-1"]),
        *variations(_approved, "side", BAD_SIDES),
        *variations(_approved, "symbol", BAD_SYMBOLS),
        *variations(_approved, "signal_id", ["", "sig 9", "sig-9\n"]),
        year_one(_approved, "decided_at"),
        *_tick_variations(),
    ]


@pytest.mark.parametrize("event", _execution_variations(), ids=repr)
async def test_execution_refuses_hostile_events(event: Message) -> None:
    await assert_refused(await _primed_execution(), event)


async def test_execution_refuses_an_event_time_of_year_one() -> None:
    for event in (_approved(), _tick()):
        await assert_refused(await _primed_execution(), event, when=YEAR_ONE)


# -- portfolio ---------------------------------------------------------------------------------


def _fill() -> execution_v2.OrderFilled:
    fill = execution_v2.OrderFilled(order_id="o-9", symbol="BTC-USD", side=Side.SIDE_BUY)
    fill.fills.add(quantity="1", price="100", fee="0.1", fee_currency="USD")
    return fill


async def _primed_portfolio() -> Portfolio:
    portfolio = Portfolio(starting_equity=Decimal(100_000))
    first = _fill()
    first.order_id = "o-1"
    await deliver(portfolio, envelope(first, when=at(1)))
    await deliver(portfolio, envelope(_tick("101", sequence=2), when=at(2)))
    return portfolio


def _portfolio_variations() -> list[Message]:
    no_parts = _fill()
    del no_parts.fills[:]
    return [
        *variations(_fill, "fills.quantity", BAD_POSITIVES),
        *variations(_fill, "fills.price", BAD_POSITIVES),
        *variations(_fill, "fills.fee", [*BAD_NUMBERS, "1e16"]),
        *variations(_fill, "side", BAD_SIDES),
        *variations(_fill, "symbol", BAD_SYMBOLS),
        *variations(_fill, "order_id", ["", "o 9", "o-9\n"]),
        no_parts,
        *_tick_variations(),
    ]


@pytest.mark.parametrize("event", _portfolio_variations(), ids=repr)
async def test_portfolio_refuses_hostile_events(event: Message) -> None:
    await assert_refused(await _primed_portfolio(), event)


async def test_portfolio_refuses_an_event_time_of_year_one() -> None:
    for event in (_fill(), _tick()):
        await assert_refused(await _primed_portfolio(), event, when=YEAR_ONE)


# -- analytics ---------------------------------------------------------------------------------


async def _primed_analytics() -> Analytics:
    analytics = Analytics(StubPolicyStore())
    await deliver(analytics, envelope(_closed(), when=at(1)))
    await deliver(analytics, envelope(_pnl(), when=at(2)))
    return analytics


def _analytics_variations() -> list[Message]:
    return [
        *variations(_pnl, "drawdown", [*BAD_NUMBERS, "-0.1", "1.5"]),
        *variations(_pnl, "daily_pnl", [*BAD_NUMBERS, "1e16"]),
        *variations(_pnl, "equity", [*BAD_NUMBERS, "-1e16"]),
        *variations(_closed, "realized_pnl", [*BAD_NUMBERS, "", "1e16"]),
        *variations(_closed, "symbol", BAD_SYMBOLS),
    ]


@pytest.mark.parametrize("event", _analytics_variations(), ids=repr)
async def test_analytics_refuses_hostile_events(event: Message) -> None:
    await assert_refused(await _primed_analytics(), event)


async def test_analytics_refuses_an_event_time_of_year_one() -> None:
    for event in (_pnl(), _closed()):
        await assert_refused(await _primed_analytics(), event, when=YEAR_ONE)
