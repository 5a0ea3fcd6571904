"""The rules a policy must keep, reported as one violation per bad field.

Every rule names the field path the control plane's field masks use
(``defensive.max_leverage``), so a google.rpc.BadRequest can point at it.

Every limit has an upper bound that makes sense for trading (``LIMIT_BOUNDS``, the README's
table), and every decimal keeps the strict parser's digit and place bounds
(``runtime.core.decimals``): a policy that could not be read back is never written.
"""

from __future__ import annotations

import re
from decimal import Decimal

from runtime.core.decimals import MAX_PLACES, DecimalError, check_bounded
from runtime.core.policy.errors import FieldViolation, PolicyValidationError
from runtime.core.policy.model import ModeLimits, Policy, RiskMode, TradingState

_SYMBOL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")

PERCENT_FIELDS = ("risk_per_trade_pct", "max_daily_loss_pct", "max_drawdown_pct")
MAX_LEVERAGE = Decimal(100)
MAX_POSITION_NOTIONAL = Decimal("1000000000000")  # 1e12 in the account currency
MAX_OPEN_POSITIONS = 10_000
MAX_ORDERS_PER_SECOND = 100_000
MAX_SYMBOLS = 1_000
# Places kept after the point: finer limits mean nothing for trading.
LIMIT_PLACES = 8
assert LIMIT_PLACES <= MAX_PLACES


def mode_prefix(mode: RiskMode) -> str:
    """The field-path prefix of a mode's limits: ``normal`` for NORMAL."""
    return mode.value.lower()


def _decimal_problem(value: object) -> str | None:
    if not isinstance(value, Decimal):
        return f"must be a decimal number, got {type(value).__name__}"
    try:
        check_bounded(value, "limit")
    except DecimalError as exc:
        return exc.rule
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if -exponent > LIMIT_PLACES:
        return f"must have at most {LIMIT_PLACES} digits after the point"
    return None


def limits_violations(prefix: str, limits: ModeLimits) -> list[FieldViolation]:
    """Every broken rule of one mode's limits, with paths under ``prefix``."""
    found: list[FieldViolation] = []

    def bad(name: str, description: str) -> None:
        found.append(FieldViolation(f"{prefix}.{name}", description))

    def decimal_ok(name: str) -> Decimal | None:
        value = getattr(limits, name)
        problem = _decimal_problem(value)
        if problem is not None:
            bad(name, problem)
            return None
        return value  # type: ignore[no-any-return]

    confidence = decimal_ok("min_confidence")
    if confidence is not None and not Decimal(0) <= confidence <= Decimal(1):
        bad("min_confidence", f"must be between 0 and 1 inclusive, got {confidence}")
    leverage = decimal_ok("max_leverage")
    if leverage is not None and not Decimal(1) <= leverage <= MAX_LEVERAGE:
        bad(
            "max_leverage",
            f"must be at least 1 (no leverage) and at most {MAX_LEVERAGE}, got {leverage}",
        )
    notional = decimal_ok("max_position_notional")
    if notional is not None and not Decimal(0) < notional <= MAX_POSITION_NOTIONAL:
        bad(
            "max_position_notional",
            f"must be greater than 0 and at most {MAX_POSITION_NOTIONAL}, got {notional}",
        )
    for name in PERCENT_FIELDS:
        percent = decimal_ok(name)
        if percent is not None and not Decimal(0) < percent <= Decimal(100):
            bad(name, f"must be a percentage in (0, 100], got {percent}")
    for name, upper in (
        ("max_open_positions", MAX_OPEN_POSITIONS),
        ("max_orders_per_second", MAX_ORDERS_PER_SECOND),
    ):
        count = getattr(limits, name)
        if not isinstance(count, int) or isinstance(count, bool):
            bad(name, f"must be a whole number, got {count!r}")
        elif not 1 <= count <= upper:
            bad(name, f"must be between 1 and {upper}, got {count}")
    symbols = limits.allowed_symbols
    if not isinstance(symbols, frozenset):
        bad("allowed_symbols", f"must be a set of symbols, got {type(symbols).__name__}")
    elif not symbols:
        bad("allowed_symbols", "must name at least one symbol (use trading_state HALTED to stop)")
    elif len(symbols) > MAX_SYMBOLS:
        bad("allowed_symbols", f"must name at most {MAX_SYMBOLS} symbols, got {len(symbols)}")
    else:
        for symbol in sorted(symbols, key=repr):
            if not isinstance(symbol, str) or not _is_symbol(symbol):
                bad(
                    "allowed_symbols",
                    f"symbol {_short(symbol)} is not 1-64 ASCII letters, digits or '.', '_', "
                    "':', '/', '-'",
                )
    return found


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_symbol(text: str) -> bool:
    return text.isascii() and _SYMBOL_RE.fullmatch(text) is not None


def policy_violations(policy: Policy) -> list[FieldViolation]:
    """Every broken rule of a whole policy."""
    found: list[FieldViolation] = []
    if not isinstance(policy.version, int) or policy.version < 1:
        found.append(FieldViolation("version", f"must be 1 or more, got {policy.version!r}"))
    if not isinstance(policy.mode, RiskMode):
        found.append(FieldViolation("mode", f"must be a RiskMode, got {policy.mode!r}"))
    if not isinstance(policy.trading_state, TradingState):
        found.append(
            FieldViolation("trading_state", f"must be a TradingState, got {policy.trading_state!r}")
        )
    for mode in RiskMode:
        limits = policy.limits.get(mode)
        if limits is None:
            found.append(FieldViolation(mode_prefix(mode), "limits of this mode are missing"))
        else:
            found.extend(limits_violations(mode_prefix(mode), limits))
    return found


def check_policy(policy: Policy) -> Policy:
    """Return ``policy`` when it keeps every rule; raise ``PolicyValidationError`` otherwise."""
    violations = policy_violations(policy)
    if violations:
        raise PolicyValidationError(violations)
    return policy
