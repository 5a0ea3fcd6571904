"""The checks every domain runs at its door, before an event may touch its state.

Each check returns the usable value or raises ``InvalidEvent(field, rule, value)``, which the
delivery loop dead-letters at once with reason ``invalid``: an event from outside is trusted
to be neither finite, nor bounded, nor well-formed. Domains call these first and change state
only with what they return, so a bad event changes nothing.

The bounds are generous for trading and tight for arithmetic: a price or quantity is below
``MAX_QUANTITY``, an amount of money below ``MAX_MONEY`` in magnitude, and a time between
1970 and 2200 (date arithmetic near the ends of ``datetime`` overflows).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, datetime
from decimal import Decimal

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.envelope_pb2 import Envelope
from quantum.events.v1.market_pb2 import MarketTick

from runtime.core.decimals import DecimalError, parse_decimal
from runtime.core.failures import InvalidEvent

MAX_QUANTITY = Decimal("1e12")  # prices and quantities
MAX_MONEY = Decimal("1e15")  # equity, PnL, notional, fees (in magnitude)

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
_EARLIEST_S = int(EARLIEST.timestamp())
_LATEST_S = int(LATEST.timestamp())

_SYMBOL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_SIDES = (Side.SIDE_BUY, Side.SIDE_SELL)


def number(
    text: str,
    field: str,
    *,
    minimum: Decimal | None = None,
    maximum: Decimal | None = None,
    above: Decimal | None = None,
) -> Decimal:
    """A strict decimal (``runtime.core.decimals``) within the given bounds."""
    try:
        return parse_decimal(text, field, minimum=minimum, maximum=maximum, above=above)
    except DecimalError as exc:
        raise InvalidEvent(field, exc.rule, text) from None


def positive(text: str, field: str, maximum: Decimal = MAX_QUANTITY) -> Decimal:
    """A price or quantity: > 0 and at most ``maximum``."""
    return number(text, field, above=Decimal(0), maximum=maximum)


def money(text: str, field: str, *, minimum: Decimal | None = None) -> Decimal:
    """An amount of money (any sign unless ``minimum``), below ``MAX_MONEY`` in magnitude."""
    low = -MAX_MONEY if minimum is None else minimum
    return number(text, field, minimum=low, maximum=MAX_MONEY)


def fraction(text: str, field: str) -> Decimal:
    """A ratio in [0, 1] (a confidence, a drawdown)."""
    return number(text, field, minimum=Decimal(0), maximum=Decimal(1))


def is_symbol(text: str) -> bool:
    """True for a well-formed market symbol: 1-64 ASCII letters, digits and ``._:/-``."""
    return text.isascii() and _SYMBOL_RE.fullmatch(text) is not None


def symbol(text: str, field: str = "symbol") -> str:
    """A market symbol: 1-64 ASCII letters, digits and ``._:/-``."""
    if not is_symbol(text):
        raise InvalidEvent(field, "must be 1-64 ASCII letters, digits or '._:/-'", text)
    return text


def allowed_symbol(text: str, allowed: Collection[str], field: str = "symbol") -> str:
    """A well-formed symbol that is also on ``allowed``."""
    symbol(text, field)
    if text not in allowed:
        raise InvalidEvent(field, "is not on any allow-list of the policy", text)
    return text


def identifier(text: str, field: str) -> str:
    """An id (signal, order, trade): 1-128 ASCII letters, digits and ``._:-``."""
    if not text.isascii() or _ID_RE.fullmatch(text) is None:
        raise InvalidEvent(field, "must be 1-128 ASCII letters, digits or '._:-'", text)
    return text


def side(value: int, field: str = "side") -> Side.ValueType:
    """BUY or SELL: never UNSPECIFIED or a number the schema does not know."""
    if value not in _SIDES:
        raise InvalidEvent(field, "must be SIDE_BUY or SIDE_SELL", value)
    return Side.ValueType(value)


def timestamp_problem(stamp: Timestamp) -> str | None:
    """Why a Timestamp is not a usable event time, or None when it is."""
    if not 0 <= stamp.nanos <= 999_999_999:
        return f"has nanos {stamp.nanos}, outside 0..999999999"
    if not _EARLIEST_S <= stamp.seconds < _LATEST_S:
        return (
            f"is {stamp.seconds} s since the epoch, outside {EARLIEST.isoformat()} .. "
            f"{LATEST.isoformat()}"
        )
    return None


def event_time(stamp: Timestamp, field: str) -> datetime:
    """A Timestamp within ``EARLIEST`` .. ``LATEST``, as an aware datetime."""
    problem = timestamp_problem(stamp)
    if problem is not None:
        raise InvalidEvent(field, problem, f"{stamp.seconds}s {stamp.nanos}ns")
    return stamp.ToDatetime(tzinfo=UTC)


def optional_time(message: Message, name: str) -> None:
    """An optional Timestamp field of ``message``: checked only when the event sets it."""
    if message.HasField(name):
        stamp = getattr(message, name)
        problem = timestamp_problem(stamp)
        if problem is not None:
            raise InvalidEvent(name, problem, f"{stamp.seconds}s {stamp.nanos}ns")


def occurred_at(envelope: Envelope) -> datetime:
    """The envelope's event time, which domains use as their clock, checked."""
    return event_time(envelope.occurred_at, "envelope.occurred_at")


def tick(tick: MarketTick) -> Decimal:
    """A market.tick every consumer can use; returns its price.

    Shared by every domain that reads ticks, so they all agree on which ticks exist.
    """
    symbol(tick.symbol)
    price = positive(tick.price, "price")
    for name in ("bid", "ask"):
        text = getattr(tick, name)
        if text:
            positive(text, name)
    if tick.volume:
        number(tick.volume, "volume", minimum=Decimal(0), maximum=MAX_QUANTITY)
    optional_time(tick, "observed_at")
    return price
