"""Field-mask changes: applying ``{"normal.max_leverage": Decimal("3")}`` to a policy.

Paths are the proto field paths of ``quantum.events.v1.Policy``: ``mode``,
``trading_state``, ``<mode>`` (a whole ``ModeLimits``) and ``<mode>.<limit>`` where
``<mode>`` is ``aggressive``, ``normal`` or ``defensive``. Values may be given as a decimal
string (read by the one strict parser, ``runtime.core.decimals``), an int or an enum name, and
every path that cannot be used is reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TypeVar

from runtime.core.decimals import DecimalError, check_bounded, parse_decimal
from runtime.core.policy.errors import FieldViolation, PolicyValidationError
from runtime.core.policy.model import ModeLimits, Policy, RiskMode, TradingState
from runtime.core.policy.validation import mode_prefix, policy_violations

LIMIT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ModeLimits))
INT_FIELDS = frozenset({"max_open_positions", "max_orders_per_second"})
READ_ONLY = frozenset({"version", "updated_at", "updated_by", "reason"})
_MODE_BY_PREFIX = {mode_prefix(mode): mode for mode in RiskMode}

FIELD_PATHS: tuple[str, ...] = (
    "mode",
    "trading_state",
    *(f"{mode_prefix(m)}.{name}" for m in RiskMode for name in LIMIT_FIELDS),
)

# Proto enum numbers (quantum.events.v1.RiskMode / TradingState), for callers passing them.
_MODE_NUMBERS = {1: RiskMode.AGGRESSIVE, 2: RiskMode.NORMAL, 3: RiskMode.DEFENSIVE}
_E = TypeVar("_E", RiskMode, TradingState)
_STATE_NUMBERS = {1: TradingState.ACTIVE, 2: TradingState.REDUCING, 3: TradingState.HALTED}


class _Bad(Exception):
    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


def coerce_mode(value: object) -> RiskMode:
    """A RiskMode from a RiskMode, its name (``defensive``, ``RISK_MODE_DEFENSIVE``) or number."""
    return _coerce_enum(value, RiskMode, "RISK_MODE_", _MODE_NUMBERS)


def coerce_trading_state(value: object) -> TradingState:
    """A TradingState from a TradingState, its name or its proto number."""
    return _coerce_enum(value, TradingState, "TRADING_STATE_", _STATE_NUMBERS)


def _coerce_enum(value: object, enum: type[_E], proto_prefix: str, numbers: Mapping[int, _E]) -> _E:
    if isinstance(value, enum):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value in numbers:
        return numbers[value]
    if isinstance(value, str):
        name = value.strip().upper().removeprefix(proto_prefix)
        if name in enum.__members__:
            return enum[name]
    choices = ", ".join(enum.__members__)
    raise _Bad(f"must be one of {choices}, got {_short(value)}")


def _coerce_decimal(value: object) -> Decimal:
    try:
        if isinstance(value, bool):
            raise _Bad(f"must be a decimal number, got {value!r}")
        if isinstance(value, Decimal):
            return check_bounded(value, "value")
        if isinstance(value, int):
            return check_bounded(Decimal(value), "value")
        if isinstance(value, float):
            return parse_decimal(repr(value), "value")
        if isinstance(value, str):
            return parse_decimal(value, "value")
    except DecimalError as exc:
        raise _Bad(f"{exc.rule} (got {_short(value)})") from None
    raise _Bad(f"must be a decimal number, got {type(value).__name__} {_short(value)}")


def _coerce_int(value: object) -> int:
    if isinstance(value, bool):
        raise _Bad(f"must be a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal | str | float):
        try:
            number = _coerce_decimal(value)
        except _Bad:
            raise _Bad(f"must be a whole number, got {_short(value)}") from None
        if number == number.to_integral_value():
            return int(number)
    raise _Bad(f"must be a whole number, got {_short(value)}")


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _coerce_symbols(value: object) -> frozenset[str]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise _Bad(f"must be a list of symbols, got {_short(value)}")
    symbols = list(value)
    if not all(isinstance(s, str) for s in symbols):
        raise _Bad(f"every symbol must be a string, got {_short(symbols)}")
    return frozenset(symbols)  # as given: a symbol with spaces is reported, not trimmed


def _coerce_limit(name: str, value: object) -> object:
    if name in INT_FIELDS:
        return _coerce_int(value)
    if name == "allowed_symbols":
        return _coerce_symbols(value)
    return _coerce_decimal(value)


def apply_changes(policy: Policy, changes: Mapping[str, object]) -> Policy:
    """``policy`` with ``changes`` applied (version and audit fields untouched), validated.

    Raises ``PolicyValidationError`` naming every unusable path and every broken rule.
    """
    violations: list[FieldViolation] = []
    mode = policy.mode
    state = policy.trading_state
    limits: dict[RiskMode, ModeLimits] = dict(policy.limits)
    per_mode: dict[RiskMode, dict[str, object]] = {}
    if not changes:
        raise PolicyValidationError([FieldViolation("update_mask", "names no field to change")])
    for path, value in changes.items():
        try:
            if path == "mode":
                mode = coerce_mode(value)
            elif path == "trading_state":
                state = coerce_trading_state(value)
            elif path in _MODE_BY_PREFIX:
                if not isinstance(value, ModeLimits):
                    raise _Bad(f"must be a ModeLimits, got {type(value).__name__}")
                limits[_MODE_BY_PREFIX[path]] = value
            elif path in READ_ONLY:
                raise _Bad("is set by the PolicyStore and cannot be changed")
            else:
                prefix, _, name = path.partition(".")
                if prefix not in _MODE_BY_PREFIX or name not in LIMIT_FIELDS:
                    raise _Bad(
                        "is not a policy field; use mode, trading_state or "
                        "<aggressive|normal|defensive>.<limit> with a limit among "
                        + ", ".join(LIMIT_FIELDS)
                    )
                per_mode.setdefault(_MODE_BY_PREFIX[prefix], {})[name] = _coerce_limit(name, value)
        except _Bad as bad:
            violations.append(FieldViolation(path, bad.description))
    for changed_mode, fields in per_mode.items():
        limits[changed_mode] = dataclasses.replace(limits[changed_mode], **fields)  # type: ignore[arg-type]
    result = dataclasses.replace(policy, mode=mode, trading_state=state, limits=limits)
    violations.extend(policy_violations(result))  # every problem in one answer
    if violations:
        raise PolicyValidationError(violations)
    return result


def changed_fields(old: Policy | None, new: Policy) -> tuple[str, ...]:
    """The field paths whose values differ between ``old`` and ``new`` (all, when no old)."""
    if old is None:
        return FIELD_PATHS
    found: list[str] = []
    if old.mode != new.mode:
        found.append("mode")
    if old.trading_state != new.trading_state:
        found.append("trading_state")
    for mode in RiskMode:
        before, after = old.limits[mode], new.limits[mode]
        if before == after:
            continue
        for name in LIMIT_FIELDS:
            if getattr(before, name) != getattr(after, name):
                found.append(f"{mode_prefix(mode)}.{name}")
    return tuple(found)
