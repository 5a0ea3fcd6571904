"""The policy: the versioned risk configuration, its changes, history and snapshots.

Domains are given a ``PolicyReader`` (and analytics a ``PolicyWriter``); the composition
root builds the one store that implements both: ``runtime.adapters.redis.policy_store``'s
``PolicyStore`` (Redis), or ``runtime.core.policy.memory.InMemoryPolicy`` (backtests).
"""

from runtime.core.policy.changes import FIELD_PATHS, apply_changes, changed_fields
from runtime.core.policy.codec import policy_from_proto, policy_to_proto
from runtime.core.policy.defaults import DEFAULT_ALLOWED_SYMBOLS, DEFAULT_LIMITS, default_policy
from runtime.core.policy.errors import (
    FieldViolation,
    PolicyError,
    PolicyUnavailable,
    PolicyValidationError,
    SnapshotCorrupted,
    VersionConflict,
)
from runtime.core.policy.history import PolicyChangeRecord, record_from_proto, record_to_proto
from runtime.core.policy.model import ModeLimits, Policy, RiskMode, TradingState
from runtime.core.policy.ports import PolicyReader, PolicyWriter
from runtime.core.policy.status import PolicyHealth, PolicyStoreStatus
from runtime.core.policy.validation import check_policy, policy_violations

__all__ = [
    "DEFAULT_ALLOWED_SYMBOLS",
    "DEFAULT_LIMITS",
    "FIELD_PATHS",
    "FieldViolation",
    "ModeLimits",
    "Policy",
    "PolicyChangeRecord",
    "PolicyError",
    "PolicyHealth",
    "PolicyReader",
    "PolicyStoreStatus",
    "PolicyUnavailable",
    "PolicyValidationError",
    "PolicyWriter",
    "RiskMode",
    "SnapshotCorrupted",
    "TradingState",
    "VersionConflict",
    "apply_changes",
    "changed_fields",
    "check_policy",
    "default_policy",
    "policy_from_proto",
    "policy_to_proto",
    "policy_violations",
    "record_from_proto",
    "record_to_proto",
]
