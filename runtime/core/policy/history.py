"""Change records: who changed the policy, when, why, and from what to what.

Stored in Redis as ``quantum.control.v1.PolicyChange`` bytes (one per version), which is also
what the control plane serves, so a record reads the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from quantum.control.v1 import policy_service_pb2

from runtime.core.policy.codec import (
    datetime_from_proto,
    datetime_to_proto,
    policy_from_proto,
    policy_to_proto,
)
from runtime.core.policy.model import Policy


@dataclass(frozen=True, slots=True)
class PolicyChangeRecord:
    """One version of the policy and the change that made it.

    ``old_policy`` is None for the first version (the defaults) and for a restore into a
    Redis that had lost its data.
    """

    version: int
    previous_version: int
    changed_at: datetime
    changed_by: str
    reason: str
    changed_fields: tuple[str, ...]
    old_policy: Policy | None
    new_policy: Policy


def record_to_proto(record: PolicyChangeRecord) -> policy_service_pb2.PolicyChange:
    """The control plane's form of a change record."""
    message = policy_service_pb2.PolicyChange(
        version=record.version,
        previous_version=record.previous_version,
        changed_at=datetime_to_proto(record.changed_at),
        changed_by=record.changed_by,
        reason=record.reason,
        changed_fields=list(record.changed_fields),
        new_policy=policy_to_proto(record.new_policy),
    )
    if record.old_policy is not None:
        message.old_policy.CopyFrom(policy_to_proto(record.old_policy))
    return message


def record_from_proto(message: policy_service_pb2.PolicyChange) -> PolicyChangeRecord:
    """A change record from its proto form (policies are not re-validated: history is fact)."""
    return PolicyChangeRecord(
        version=message.version,
        previous_version=message.previous_version,
        changed_at=datetime_from_proto(message.changed_at),
        changed_by=message.changed_by,
        reason=message.reason,
        changed_fields=tuple(message.changed_fields),
        old_policy=policy_from_proto(message.old_policy, validate=False)
        if message.HasField("old_policy")
        else None,
        new_policy=policy_from_proto(message.new_policy, validate=False),
    )
