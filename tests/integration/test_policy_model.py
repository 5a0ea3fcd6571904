"""The policy model: documented defaults, validation per field, field-mask changes, proto form."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from quantum.events.v1 import policy_pb2

from runtime.core.policy import (
    DEFAULT_LIMITS,
    FIELD_PATHS,
    PolicyValidationError,
    RiskMode,
    TradingState,
    apply_changes,
    changed_fields,
    check_policy,
    default_policy,
    policy_from_proto,
    policy_to_proto,
)


def violations_of(error: PolicyValidationError) -> dict[str, str]:
    return {v.field: v.description for v in error.violations}


def test_defaults_are_the_documented_values_and_valid() -> None:
    policy = check_policy(default_policy())
    normal = policy.limits[RiskMode.NORMAL]
    assert (policy.version, policy.mode, policy.trading_state) == (
        1,
        RiskMode.NORMAL,
        TradingState.ACTIVE,
    )
    assert normal.min_confidence == Decimal("0.60")
    assert normal.max_leverage == Decimal(3)
    assert normal.max_position_notional == Decimal(25000)
    assert normal.max_open_positions == 5
    assert normal.risk_per_trade_pct == Decimal(1)
    assert normal.max_daily_loss_pct == Decimal(3)
    assert normal.max_drawdown_pct == Decimal(10)
    assert normal.max_orders_per_second == 10
    assert normal.allowed_symbols == {"BTC-USD", "ETH-USD", "SOL-USD"}
    aggressive, defensive = DEFAULT_LIMITS[RiskMode.AGGRESSIVE], DEFAULT_LIMITS[RiskMode.DEFENSIVE]
    assert aggressive.max_leverage > normal.max_leverage > defensive.max_leverage
    assert aggressive.min_confidence < normal.min_confidence < defensive.min_confidence
    assert policy.active_limits is normal


@pytest.mark.parametrize(
    ("path", "value", "complaint"),
    [
        ("normal.max_leverage", Decimal("0.5"), "at least 1"),
        ("normal.min_confidence", Decimal("1.2"), "between 0 and 1"),
        ("normal.min_confidence", "-0.1", "between 0 and 1"),
        ("defensive.risk_per_trade_pct", 0, "(0, 100]"),
        ("aggressive.max_daily_loss_pct", Decimal("100.5"), "(0, 100]"),
        ("normal.max_drawdown_pct", "-3", "(0, 100]"),
        ("normal.max_position_notional", -1, "greater than 0"),
        ("normal.max_open_positions", -2, "between 1"),
        ("normal.max_orders_per_second", 0, "between 1"),
        ("normal.allowed_symbols", [], "at least one symbol"),
        ("normal.allowed_symbols", ["BTC USD"], "is not 1-64"),
        ("normal.max_leverage", "lots", "decimal number"),
        ("normal.max_leverage", "NaN", "finite"),
        ("normal.max_open_positions", "2.5", "whole number"),
        ("normal.allowed_symbols", "BTC-USD", "list of symbols"),
        ("mode", "RECKLESS", "one of AGGRESSIVE, NORMAL, DEFENSIVE"),
        ("trading_state", "PAUSED", "one of ACTIVE, REDUCING, HALTED"),
        ("normal.max_lev", 2, "not a policy field"),
        ("turbo", 1, "not a policy field"),
        ("version", 7, "set by the PolicyStore"),
    ],
)
def test_each_bad_change_is_reported_against_its_field(
    path: str, value: object, complaint: str
) -> None:
    with pytest.raises(PolicyValidationError) as caught:
        apply_changes(default_policy(), {path: value})
    assert complaint in violations_of(caught.value)[path]


def test_every_violation_is_reported_at_once() -> None:
    with pytest.raises(PolicyValidationError) as caught:
        apply_changes(
            default_policy(),
            {"normal.max_leverage": "0", "defensive.allowed_symbols": [], "bogus": 1},
        )
    assert set(violations_of(caught.value)) == {
        "normal.max_leverage",
        "defensive.allowed_symbols",
        "bogus",
    }
    assert "normal.max_leverage: must be at least 1" in str(caught.value)


def test_changes_are_coerced_applied_and_diffed() -> None:
    before = default_policy()
    after = apply_changes(
        before,
        {
            "mode": "RISK_MODE_DEFENSIVE",
            "trading_state": TradingState.REDUCING,
            "normal.max_leverage": "2.5",
            "defensive.allowed_symbols": ["BTC-USD"],
            "aggressive.max_open_positions": Decimal(12),
        },
    )
    assert after.mode is RiskMode.DEFENSIVE
    assert after.active_limits.allowed_symbols == frozenset({"BTC-USD"})
    assert after.limits[RiskMode.NORMAL].max_leverage == Decimal("2.5")
    assert after.limits[RiskMode.AGGRESSIVE].max_open_positions == 12
    assert after.version == before.version  # the store, not apply_changes, bumps versions
    assert changed_fields(before, after) == (
        "mode",
        "trading_state",
        "aggressive.max_open_positions",
        "normal.max_leverage",
        "defensive.allowed_symbols",
    )
    assert changed_fields(after, after) == ()
    assert set(FIELD_PATHS) >= set(changed_fields(before, after))


def test_proto_round_trip_keeps_every_field_and_plain_decimals() -> None:
    policy = dataclasses.replace(
        apply_changes(default_policy(), {"normal.max_position_notional": Decimal("1E+4")}),
        version=42,
        updated_by="operator:alice",
        reason="tighten",
    )
    message = policy_to_proto(policy)
    assert message.normal.max_position_notional == "10000"
    assert message.mode == policy_pb2.RISK_MODE_NORMAL
    wire = policy_pb2.Policy.FromString(message.SerializeToString())
    assert policy_from_proto(wire) == policy


def test_a_proto_with_bad_fields_is_rejected_per_field() -> None:
    message = policy_to_proto(default_policy())
    message.mode = policy_pb2.RISK_MODE_UNSPECIFIED
    message.normal.max_leverage = "three"
    message.ClearField("defensive")
    with pytest.raises(PolicyValidationError) as caught:
        policy_from_proto(message)
    assert set(violations_of(caught.value)) == {"mode", "normal.max_leverage", "defensive"}
