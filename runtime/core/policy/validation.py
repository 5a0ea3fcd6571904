"""The rules a policy must keep, reported as one violation per bad field.

Every rule names the field path the control plane's field masks use
(``defensive.max_leverage``), so a google.rpc.BadRequest can point at it.
"""

from __future__ import annotations

import re
from decimal import Decimal

from runtime.core.policy.errors import FieldViolation, PolicyValidationError
from runtime.core.policy.model import ModeLimits, Policy, RiskMode, TradingState

_UINT32_MAX = 2**32 - 1
_SYMBOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")

PERCENT_FIELDS = ("risk_per_trade_pct", "max_daily_loss_pct", "max_drawdown_pct")


def mode_prefix(mode: RiskMode) -> str:
    """The field-path prefix of a mode's limits: ``normal`` for NORMAL."""
    return mode.value.lower()


def _finite(value: Decimal) -> bool:
    return isinstance(value, Decimal) and value.is_finite()


def limits_violations(prefix: str, limits: ModeLimits) -> list[FieldViolation]:
    """Every broken rule of one mode's limits, with paths under ``prefix``."""
    found: list[FieldViolation] = []

    def bad(name: str, description: str) -> None:
        found.append(FieldViolation(f"{prefix}.{name}", description))

    def decimal_ok(name: str) -> Decimal | None:
        value = getattr(limits, name)
        if not _finite(value):
            bad(name, f"must be a finite decimal number, got {value!r}")
            return None
        return value  # type: ignore[no-any-return]

    confidence = decimal_ok("min_confidence")
    if confidence is not None and not Decimal(0) <= confidence <= Decimal(1):
        bad("min_confidence", f"must be between 0 and 1 inclusive, got {confidence}")
    leverage = decimal_ok("max_leverage")
    if leverage is not None and leverage < 1:
        bad("max_leverage", f"must be at least 1 (no leverage), got {leverage}")
    notional = decimal_ok("max_position_notional")
    if notional is not None and notional <= 0:
        bad("max_position_notional", f"must be greater than 0, got {notional}")
    for name in PERCENT_FIELDS:
        percent = decimal_ok(name)
        if percent is not None and not Decimal(0) < percent <= Decimal(100):
            bad(name, f"must be a percentage in (0, 100], got {percent}")
    for name in ("max_open_positions", "max_orders_per_second"):
        count = getattr(limits, name)
        if not isinstance(count, int) or isinstance(count, bool):
            bad(name, f"must be a whole number, got {count!r}")
        elif not 1 <= count <= _UINT32_MAX:
            bad(name, f"must be between 1 and {_UINT32_MAX}, got {count}")
    symbols = limits.allowed_symbols
    if not isinstance(symbols, frozenset):
        bad("allowed_symbols", f"must be a set of symbols, got {type(symbols).__name__}")
    elif not symbols:
        bad("allowed_symbols", "must name at least one symbol (use trading_state HALTED to stop)")
    else:
        for symbol in sorted(str(s) for s in symbols):
            if not isinstance(symbol, str) or not _SYMBOL_RE.match(symbol):
                bad(
                    "allowed_symbols",
                    f"symbol {symbol!r} is not 1-64 letters, digits or '.', '_', ':', '/', '-'",
                )
    return found


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
