"""Policy <-> ``quantum.events.v1.Policy``: the one wire form of a policy.

Redis, the policy.updated event, the history and the control plane all carry the proto;
decimals travel as plain decimal strings (``"0.60"``, never ``"6.0E-1"``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from google.protobuf.timestamp_pb2 import Timestamp
from quantum.events.v1 import policy_pb2

from runtime.core.decimals import DecimalError, canonical, parse_decimal
from runtime.core.policy.errors import FieldViolation, PolicyValidationError
from runtime.core.policy.model import ModeLimits, Policy, RiskMode, TradingState
from runtime.core.policy.validation import mode_prefix, policy_violations

_MODE_TO_PROTO = {
    RiskMode.AGGRESSIVE: policy_pb2.RISK_MODE_AGGRESSIVE,
    RiskMode.NORMAL: policy_pb2.RISK_MODE_NORMAL,
    RiskMode.DEFENSIVE: policy_pb2.RISK_MODE_DEFENSIVE,
}
_MODE_FROM_PROTO = {number: mode for mode, number in _MODE_TO_PROTO.items()}
_STATE_TO_PROTO = {
    TradingState.ACTIVE: policy_pb2.TRADING_STATE_ACTIVE,
    TradingState.REDUCING: policy_pb2.TRADING_STATE_REDUCING,
    TradingState.HALTED: policy_pb2.TRADING_STATE_HALTED,
}
_STATE_FROM_PROTO = {number: state for state, number in _STATE_TO_PROTO.items()}


def mode_to_proto(mode: RiskMode) -> policy_pb2.RiskMode.ValueType:
    return _MODE_TO_PROTO[mode]


def mode_from_proto(value: int) -> RiskMode:
    """The RiskMode of a proto enum number; ValueError for UNSPECIFIED or unknown numbers."""
    try:
        return _MODE_FROM_PROTO[value]  # type: ignore[index]
    except KeyError:
        raise ValueError(f"risk mode {value} is not AGGRESSIVE, NORMAL or DEFENSIVE") from None


def trading_state_to_proto(state: TradingState) -> policy_pb2.TradingState.ValueType:
    return _STATE_TO_PROTO[state]


def trading_state_from_proto(value: int) -> TradingState:
    """The TradingState of a proto enum number; ValueError for UNSPECIFIED or unknown."""
    try:
        return _STATE_FROM_PROTO[value]  # type: ignore[index]
    except KeyError:
        raise ValueError(f"trading state {value} is not ACTIVE, REDUCING or HALTED") from None


def decimal_text(value: Decimal) -> str:
    """A plain decimal string: ``Decimal("1E+1")`` -> ``"10"`` (of a validated value)."""
    return canonical(value)


def datetime_to_proto(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at if at.tzinfo else at.replace(tzinfo=UTC))
    return stamp


def datetime_from_proto(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def limits_to_proto(limits: ModeLimits) -> policy_pb2.ModeLimits:
    return policy_pb2.ModeLimits(
        min_confidence=decimal_text(limits.min_confidence),
        max_leverage=decimal_text(limits.max_leverage),
        max_position_notional=decimal_text(limits.max_position_notional),
        max_open_positions=limits.max_open_positions,
        risk_per_trade_pct=decimal_text(limits.risk_per_trade_pct),
        max_daily_loss_pct=decimal_text(limits.max_daily_loss_pct),
        allowed_symbols=sorted(limits.allowed_symbols),
        max_orders_per_second=limits.max_orders_per_second,
        max_drawdown_pct=decimal_text(limits.max_drawdown_pct),
    )


def policy_to_proto(policy: Policy) -> policy_pb2.Policy:
    """The proto form of a policy (deterministic: symbols sorted)."""
    message = policy_pb2.Policy(
        version=policy.version,
        mode=mode_to_proto(policy.mode),
        trading_state=trading_state_to_proto(policy.trading_state),
        aggressive=limits_to_proto(policy.limits[RiskMode.AGGRESSIVE]),
        normal=limits_to_proto(policy.limits[RiskMode.NORMAL]),
        defensive=limits_to_proto(policy.limits[RiskMode.DEFENSIVE]),
        updated_by=policy.updated_by,
        reason=policy.reason,
    )
    if policy.updated_at is not None:
        message.updated_at.CopyFrom(datetime_to_proto(policy.updated_at))
    return message


def _limits_from_proto(
    prefix: str, message: policy_pb2.ModeLimits, violations: list[FieldViolation]
) -> ModeLimits | None:
    values: dict[str, Decimal] = {}
    for name in (
        "min_confidence",
        "max_leverage",
        "max_position_notional",
        "risk_per_trade_pct",
        "max_daily_loss_pct",
        "max_drawdown_pct",
    ):
        text = getattr(message, name)
        try:
            values[name] = parse_decimal(text, f"{prefix}.{name}")
        except DecimalError as exc:
            violations.append(FieldViolation(exc.field, f"{exc.rule} (got {exc.text!r:.80})"))
    if len(values) < 6:
        return None
    return ModeLimits(
        max_open_positions=message.max_open_positions,
        allowed_symbols=frozenset(message.allowed_symbols),
        max_orders_per_second=message.max_orders_per_second,
        **values,
    )


def policy_from_proto(message: policy_pb2.Policy, *, validate: bool = True) -> Policy:
    """The policy a proto carries; ``PolicyValidationError`` names every unusable field."""
    violations: list[FieldViolation] = []
    limits: dict[RiskMode, ModeLimits] = {}
    for mode in RiskMode:
        prefix = mode_prefix(mode)
        if not message.HasField(prefix):  # type: ignore[arg-type]
            violations.append(FieldViolation(prefix, "limits of this mode are missing"))
            continue
        found = _limits_from_proto(prefix, getattr(message, prefix), violations)
        if found is not None:
            limits[mode] = found
    try:
        mode_value = mode_from_proto(message.mode)
    except ValueError as exc:
        violations.append(FieldViolation("mode", str(exc)))
    try:
        state_value = trading_state_from_proto(message.trading_state)
    except ValueError as exc:
        violations.append(FieldViolation("trading_state", str(exc)))
    if violations:
        raise PolicyValidationError(violations)
    policy = Policy(
        version=message.version,
        mode=mode_value,
        trading_state=state_value,
        limits=limits,
        updated_at=datetime_from_proto(message.updated_at)
        if message.HasField("updated_at")
        else None,
        updated_by=message.updated_by,
        reason=message.reason,
    )
    if validate:
        problems = policy_violations(policy)
        if problems:
            raise PolicyValidationError(problems)
    return policy
