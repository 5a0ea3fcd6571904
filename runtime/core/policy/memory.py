"""A policy held in memory: the PolicyReader and PolicyWriter of a backtest (and of tests).

It behaves as the PolicyStore does for domains — versions go up by one per change, a change
to the value in force writes nothing, ``expected_version`` is compare-and-set, every change
is validated and recorded — without Redis, snapshots or a wall clock: ``clock`` says what
time a change is stamped with (a backtest gives its logical time), so the same run records
the same history.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from runtime.core.policy.changes import apply_changes, changed_fields
from runtime.core.policy.errors import FieldViolation, PolicyValidationError, VersionConflict
from runtime.core.policy.model import Policy, RiskMode, TradingState


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """One change the in-memory policy applied."""

    version: int
    fields: tuple[str, ...]
    changed_by: str
    reason: str
    at: datetime


class InMemoryPolicy:
    """A versioned policy in process memory; see the module doc."""

    def __init__(self, initial: Policy, *, clock: Callable[[], datetime]) -> None:
        self._policy = initial
        self._clock = clock
        self.history: list[PolicyChange] = []

    def get_policy(self) -> Policy:
        return self._policy

    async def switch_mode(
        self,
        mode: RiskMode,
        *,
        expected_version: int | None = None,
        changed_by: str,
        reason: str,
    ) -> Policy:
        return self.update(
            {"mode": mode}, expected_version=expected_version, changed_by=changed_by, reason=reason
        )

    async def set_trading_state(
        self,
        state: TradingState,
        *,
        expected_version: int | None = None,
        changed_by: str,
        reason: str,
    ) -> Policy:
        return self.update(
            {"trading_state": state},
            expected_version=expected_version,
            changed_by=changed_by,
            reason=reason,
        )

    def update(
        self,
        changes: Mapping[str, object],
        *,
        expected_version: int | None = None,
        changed_by: str,
        reason: str,
    ) -> Policy:
        """Apply field-mask changes; raises ``VersionConflict`` or ``PolicyValidationError``."""
        problems = []
        if not changed_by.strip():
            problems.append(FieldViolation("changed_by", "must name who makes the change"))
        if not reason.strip():
            problems.append(FieldViolation("reason", "must say why the change is made"))
        if problems:
            raise PolicyValidationError(problems)
        base = self._policy
        if expected_version is not None and expected_version != base.version:
            raise VersionConflict(expected_version, base.version)
        candidate = apply_changes(base, changes)
        fields = changed_fields(base, candidate)
        if not fields:
            return base
        at = self._clock()
        self._policy = dataclasses.replace(
            candidate,
            version=base.version + 1,
            updated_at=at,
            updated_by=changed_by,
            reason=reason,
        )
        self.history.append(PolicyChange(self._policy.version, fields, changed_by, reason, at))
        return self._policy
