"""The one strict decimal parser for every number that crosses a boundary.

Events, the policy API, CSV feeds and the command line all read decimals from text someone
else wrote. ``decimal.Decimal(text)`` is far too lenient for that: it takes surrounding
spaces, underscores (``"1_000"``), non-ASCII digits (``"١٢"``), ``NaN``/``Infinity`` and
exponents in the billions, whose plain form has a billion digits and stalls the process that
writes it out. This parser accepts only

    [+-] digits [. digits] [e|E [+-] 1-3 digits]       (ASCII only, nothing around it)

and then bounds the *value*: at most ``MAX_DIGITS`` significant digits (the default Decimal
precision, so arithmetic on the input is exact), at most ``MAX_PLACES`` places after the
point and a magnitude below ``10**MAX_INTEGER_DIGITS``. So the canonical text
(``canonical``: plain notation, never an exponent) is always short.

Errors are ``DecimalError`` naming the field and the rule it broke, for a person to act on.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

MAX_TEXT_LENGTH = 64
MAX_DIGITS = 28
MAX_PLACES = 20
MAX_INTEGER_DIGITS = 20

_SYNTAX = re.compile(
    r"[+-]?(?P<whole>[0-9]+)(?:\.(?P<fraction>[0-9]+))?(?P<exponent>[eE][+-]?[0-9]{1,3})?"
)
_SPECIAL = re.compile(r"[+-]?(?:s?nan[0-9]*|inf|infinity)", re.IGNORECASE)
SYNTAX_RULE = (
    "must be a plain decimal number: ASCII digits with an optional sign and fraction "
    "(for example 2.5 or -0.25), no spaces, underscores or special values"
)


_PLACES_RULE = f"must have at most {MAX_PLACES} digits after the point"
_MAGNITUDE_RULE = f"must be smaller in magnitude than 1e{MAX_INTEGER_DIGITS}"
_DIGITS_RULE = f"must have at most {MAX_DIGITS} significant digits"


class DecimalError(ValueError):
    """Text that is not an acceptable decimal; ``field`` and ``rule`` say which and why."""

    def __init__(self, field: str, rule: str, text: object) -> None:
        self.field = field
        self.rule = rule
        self.text = text
        super().__init__(f"{field}: {rule} (got {_shown(text)})")


def parse_decimal(
    text: str,
    field: str,
    *,
    minimum: Decimal | None = None,
    maximum: Decimal | None = None,
    above: Decimal | None = None,
) -> Decimal:
    """``text`` as a finite, bounded Decimal; ``DecimalError`` naming ``field`` otherwise.

    ``minimum``/``maximum`` are inclusive bounds, ``above`` an exclusive lower bound.
    """
    if not isinstance(text, str):
        raise DecimalError(field, "must be a decimal number given as text", text)
    match = _SYNTAX.fullmatch(text) if len(text) <= MAX_TEXT_LENGTH and text.isascii() else None
    if match is None:
        if _SPECIAL.fullmatch(text):
            raise DecimalError(field, "must be a finite number (no NaN or Infinity)", text)
        raise DecimalError(field, SYNTAX_RULE, text)
    try:
        value = Decimal(text)
    except InvalidOperation:  # the syntax above rules this out; kept as a backstop
        raise DecimalError(field, SYNTAX_RULE, text) from None
    if match.group("exponent") is None:
        # The common case, bounded from the text itself (cheaper than the digit tuple).
        whole, fraction = match.group("whole").lstrip("0"), match.group("fraction") or ""
        if len(fraction) > MAX_PLACES:
            raise DecimalError(field, _PLACES_RULE, text)
        if len(whole) > MAX_INTEGER_DIGITS:
            raise DecimalError(field, _MAGNITUDE_RULE, text)
        if len((whole + fraction).lstrip("0")) > MAX_DIGITS:
            raise DecimalError(field, _DIGITS_RULE, text)
    else:
        check_bounded(value, field, text)
    if minimum is not None and value < minimum:
        raise DecimalError(field, f"must be at least {canonical(minimum)}", text)
    if above is not None and value <= above:
        raise DecimalError(field, f"must be greater than {canonical(above)}", text)
    if maximum is not None and value > maximum:
        raise DecimalError(field, f"must be at most {canonical(maximum)}", text)
    return value


def check_bounded(value: Decimal, field: str, shown: object = None) -> Decimal:
    """``value`` when it is finite and within the digit, place and magnitude bounds.

    For Decimals that did not come from text (a caller's own, a float converted): the same
    bounds as ``parse_decimal``, checked on the digits, never by formatting the number.
    """
    original = value if shown is None else shown
    if not isinstance(value, Decimal) or not value.is_finite():
        raise DecimalError(field, "must be a finite decimal number", original)
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    if -exponent > MAX_PLACES:
        raise DecimalError(
            field, f"must have at most {MAX_PLACES} digits after the point", original
        )
    if value and value.adjusted() >= MAX_INTEGER_DIGITS:
        raise DecimalError(
            field, f"must be smaller in magnitude than 1e{MAX_INTEGER_DIGITS}", original
        )
    if len(digits) > MAX_DIGITS:
        raise DecimalError(field, f"must have at most {MAX_DIGITS} significant digits", original)
    return value


def canonical(value: Decimal) -> str:
    """Plain decimal text, never an exponent: ``Decimal("1E+1")`` -> ``"10"``.

    Only for values that passed ``parse_decimal``/``check_bounded`` (or computed from them):
    their plain form is at most a few dozen characters.
    """
    return format(value, "f")


def _shown(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
