"""The one strict decimal parser: what crosses a boundary as a number, and what never does."""

from __future__ import annotations

from decimal import Decimal

import pytest

from runtime.core import tracing
from runtime.core.decimals import (
    MAX_INTEGER_DIGITS,
    DecimalError,
    canonical,
    check_bounded,
    parse_decimal,
)


@pytest.mark.parametrize(
    ("text", "value", "plain"),
    [
        ("0", Decimal(0), "0"),
        ("2.5", Decimal("2.5"), "2.5"),
        ("-0.25", Decimal("-0.25"), "-0.25"),
        ("+7", Decimal(7), "7"),
        ("0.60", Decimal("0.60"), "0.60"),
        ("1e3", Decimal(1000), "1000"),
        ("1.5E-3", Decimal("0.0015"), "0.0015"),
        ("1" * 20 + "." + "1" * 8, Decimal("1" * 20 + "." + "1" * 8), "1" * 20 + "." + "1" * 8),
    ],
)
def test_plain_decimals_are_read_and_written_back_without_an_exponent(
    text: str, value: Decimal, plain: str
) -> None:
    if len(text.partition(".")[0]) > MAX_INTEGER_DIGITS:
        with pytest.raises(DecimalError):
            parse_decimal(text, "x")
        return
    parsed = parse_decimal(text, "x")
    assert parsed == value
    assert canonical(parsed) == plain


HOSTILE = [
    ("NaN", "finite"),
    ("-Infinity", "finite"),
    ("inf", "finite"),
    ("sNaN", "finite"),
    ("1_000", "plain decimal"),
    (" 5", "plain decimal"),
    ("5 ", "plain decimal"),
    ("5\n", "plain decimal"),
    ("\u0661\u0662", "plain decimal"),  # Arabic-Indic digits: Decimal() takes them
    ("\uff15", "plain decimal"),  # a full-width 5
    ("", "plain decimal"),
    (".5", "plain decimal"),
    ("5.", "plain decimal"),
    ("0x10", "plain decimal"),
    ("1e999999999", "plain decimal"),  # an exponent bomb: a billion digits when written out
    ("1e-999", "after the point"),
    ("1e20", "magnitude"),
    ("0." + "0" * 21 + "1", "after the point"),
    ("1" * 15 + "." + "1" * 14, "significant digits"),
    ("9" * 65, "plain decimal"),
]


@pytest.mark.parametrize(("text", "rule"), HOSTILE)
def test_hostile_text_is_refused_naming_the_field_and_the_rule(text: str, rule: str) -> None:
    with pytest.raises(DecimalError) as caught:
        parse_decimal(text, "normal.max_leverage")
    assert caught.value.field == "normal.max_leverage"
    assert rule in caught.value.rule
    assert str(caught.value).startswith("normal.max_leverage: ")


def test_bounds_are_checked_and_named() -> None:
    assert parse_decimal("0.1", "q", above=Decimal(0)) == Decimal("0.1")
    with pytest.raises(DecimalError, match="q: must be greater than 0"):
        parse_decimal("0", "q", above=Decimal(0))
    with pytest.raises(DecimalError, match="q: must be at least 1"):
        parse_decimal("0.5", "q", minimum=Decimal(1))
    with pytest.raises(DecimalError, match="q: must be at most 100"):
        parse_decimal("100.5", "q", maximum=Decimal(100))


def test_decimals_made_in_code_get_the_same_bounds() -> None:
    assert check_bounded(Decimal("12.5"), "x") == Decimal("12.5")
    for bad in (Decimal("NaN"), Decimal("Infinity"), Decimal("1e999999999"), Decimal("1e-40")):
        with pytest.raises(DecimalError):
            check_bounded(bad, "x")


def test_a_non_string_is_refused() -> None:
    with pytest.raises(DecimalError, match="as text"):
        parse_decimal(5, "x")  # type: ignore[arg-type]


@pytest.mark.parametrize("suffix", ["\n", " ", "\r"])
def test_trace_and_span_ids_with_a_trailing_newline_or_space_are_not_ids(suffix: str) -> None:
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    assert tracing.is_trace_id(trace_id)
    assert tracing.is_span_id(span_id)
    assert not tracing.is_trace_id(trace_id + suffix)
    assert not tracing.is_span_id(span_id + suffix)
