"""Hypothesis strategies for hostile input: numbers, symbols, ids, times, whole messages.

Messages are built from their descriptors, so every field of every event and request type
is fuzzed, including fields added later. ``collect`` draws a fixed, derandomized sample: the
system under test then runs once over all of it, which keeps the fuzz tests bounded.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, TypeVar

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

T = TypeVar("T")

HOSTILE_NUMBERS = [
    "NaN", "-Infinity", "Infinity", "sNaN", "inf", "1_000", " 5", "5 ", "5\n", "\u0661\u0662",
    "\uff15", "1e999999999", "1e-999", "1e400", "-1", "0", "-0", "", "x", "9" * 80, "\x00",
    "0x10", "1e19", "1e13", "0.000000000000000000001", "1.5", "2", "0.7",
]  # fmt: skip
HOSTILE_SYMBOLS = [
    "BTC-USD", "ETH-USD", "SOL-USD", "DOGE-USD", "", "BTC USD", "BTC-USD\n", "\uff22TC",
    "B" * 70, "FORGED-1",
]  # fmt: skip
HOSTILE_IDS = ["sig-1", "ord-1", "", "a b", "x\n", "s" * 200, "\u00e9t\u00e9"]
_MAX = 2**64 - 1
_HOSTILE_ENTRY_IDS = [f"{_MAX}-{_MAX}", f"{_MAX}", "99999999999999999999-0", "1-0\n", "0-0", "9"]
HOSTILE_TEXT = ["", "a" * 300, "\x00\x01", "\n", "\u202e", "../..", "*", "quantum:*"]
SECONDS = [0, -62135596800, 253402300799, 1_795_000_000, 10**11, -1, 2**40, -(2**40)]

# Valid values are drawn as often as hostile ones, so that many events pass the doors and
# the domains' states (and the events they emit downstream) are exercised too.
_valid_numbers = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(1000), places=4)
_fractions = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("0.99"), places=2)
numbers = st.one_of(
    _valid_numbers.map(str),
    st.decimals(min_value=Decimal("0.01"), max_value=Decimal("0.99"), places=2).map(str),
    st.sampled_from(HOSTILE_NUMBERS),
    st.text(max_size=12),
)
symbols = st.one_of(
    st.sampled_from(["BTC-USD", "ETH-USD", "SOL-USD"]),
    st.sampled_from(HOSTILE_SYMBOLS),
    st.text(max_size=8),
)
ids = st.one_of(
    st.from_regex(r"[a-z]{3}-[0-9]{1,6}", fullmatch=True),
    st.sampled_from(HOSTILE_IDS),
    st.text(max_size=12),
)
texts = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=40))

_DECIMAL_NAMES = (
    "price", "quantity", "fee", "equity", "pnl", "confidence", "value", "notional", "drawdown",
    "exposure", "volume", "bid", "ask", "leverage", "pct", "min_", "max_", "slippage", "rate",
    "loss",
)  # fmt: skip
_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def _string_for(name: str, valid: bool) -> st.SearchStrategy[str]:
    if name == "symbol" or name.endswith("symbols") or name == "partition_key":
        return st.sampled_from(["BTC-USD", "ETH-USD", "SOL-USD"]) if valid else symbols
    if name.endswith("_token") or name.startswith(("entry_id", "start_id", "end_id")):
        # Stream entry ids: well-formed ones up to the largest Redis takes, and worse.
        well_formed = st.one_of(
            st.sampled_from(_HOSTILE_ENTRY_IDS[:2]),
            st.from_regex(r"[0-9]{1,20}-[0-9]{1,20}", fullmatch=True),
        )
        return well_formed if valid else st.one_of(ids, st.sampled_from(_HOSTILE_ENTRY_IDS))
    if name.endswith("_id") or name.endswith("_ids"):
        if valid:
            return st.from_regex(r"[a-z]{3}-[0-9]{1,6}", fullmatch=True)
        return st.one_of(ids, st.sampled_from(_HOSTILE_ENTRY_IDS))
    if any(part in name for part in _DECIMAL_NAMES):
        return _fractions.map(str) if valid else numbers
    return st.from_regex(r"[a-z]{0,8}", fullmatch=True) if valid else st.one_of(texts, ids)


def _scalar(field: FieldDescriptor, valid: bool) -> st.SearchStrategy[Any]:
    cpp = field.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_STRING:
        if field.type == FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=64)
        return _string_for(field.name, valid)
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if cpp == FieldDescriptor.CPPTYPE_ENUM:
        known = st.sampled_from([v.number for v in field.enum_type.values if v.number] or [0])
        return known if valid else st.one_of(known, st.sampled_from([0, -1, 7, 99, 2**31 - 1]))
    if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    low, high = _INT_RANGES[cpp]
    if valid:
        return st.integers(max(low, 0), min(high, 1000))
    edges = [v for v in (low, high, 0, 1, -1, 2**31, 2**53) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


@st.composite
def timestamps(draw: st.DrawFn, valid: bool = False) -> tuple[int, int]:
    if valid:
        return draw(st.integers(1_790_000_000, 1_800_000_000)), draw(st.integers(0, 999_999_999))
    seconds = draw(
        st.one_of(
            st.integers(1_700_000_000, 1_900_000_000),
            st.sampled_from(SECONDS),
            st.integers(-(2**42), 2**42),
        )
    )
    nanos = draw(st.one_of(st.integers(0, 999_999_999), st.sampled_from([10**9, -1])))
    return seconds, nanos


def messages(
    descriptor: Descriptor, depth: int = 0, *, valid: bool = False
) -> st.SearchStrategy[dict[str, Any]]:
    """Field values for a message of ``descriptor`` (a dict; ``build`` makes the message).

    ``valid``: only well-formed values (which may still break a domain's rules: a confidence
    above its range, a fill of a symbol never opened), so that events reach the domains' state.
    """
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None:
            if field.message_type.full_name == "google.protobuf.Timestamp":
                value: st.SearchStrategy[Any] = timestamps(valid)
            elif field.message_type.GetOptions().map_entry:
                value = st.dictionaries(texts, st.one_of(numbers, texts), max_size=3)
            elif depth >= 2:
                continue
            else:
                value = messages(field.message_type, depth + 1, valid=valid)
            if field.is_repeated and not (field.message_type.GetOptions().map_entry):
                value = st.lists(value, min_size=1 if valid else 0, max_size=3)
        else:
            value = _scalar(field, valid)
            if field.is_repeated:
                value = st.lists(value, max_size=4)
        # None: the field stays unset
        parts[field.name] = value if valid else st.one_of(value, value, st.none())
    return st.fixed_dictionaries(parts)


def build(message_class: type[Message], values: dict[str, Any]) -> Message:
    """A message from ``messages`` output; values the runtime rejects are left unset."""
    message = message_class()
    fill(message, values)
    return message


def fill(message: Message, values: dict[str, Any]) -> None:
    for name, value in values.items():
        if value is None:
            continue
        field = message.DESCRIPTOR.fields_by_name[name]
        try:
            _set(message, field, value)
        except (ValueError, TypeError, OverflowError):  # the library refuses it: left unset
            message.ClearField(name)


def _set(message: Message, field: FieldDescriptor, value: Any) -> None:
    name = field.name
    if field.message_type is not None:
        target = getattr(message, name)
        if field.message_type.full_name == "google.protobuf.Timestamp":
            seconds, nanos = value
            target.seconds, target.nanos = seconds, nanos
        elif field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                target[key] = item
        elif field.is_repeated:
            for item in value:
                fill(target.add(), item)
        else:
            fill(target, value)
            target.SetInParent()
        return
    if field.is_repeated:
        getattr(message, name).extend(value)
    else:
        setattr(message, name, value)


def collect(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """``count`` examples of ``strategy``, the same ones on every run (derandomized)."""
    found: list[T] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(strategy)
    def gather(value: T) -> None:
        found.append(value)

    gather()
    return found[:count]
