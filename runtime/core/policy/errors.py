"""The ways a policy read or write fails, each carrying what a caller needs to act on it.

The control plane maps them onto gRPC statuses: ``VersionConflict`` -> ABORTED,
``PolicyValidationError`` -> INVALID_ARGUMENT with a google.rpc.BadRequest built from
``violations``, ``PolicyUnavailable`` -> UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class PolicyError(Exception):
    """Base of every PolicyStore error."""


class VersionConflict(PolicyError):
    """A compare-and-set write named a version that is no longer the current one."""

    def __init__(self, expected: int, current: int) -> None:
        self.expected = expected
        self.current = current
        super().__init__(
            f"policy version conflict: the write expected version {expected}, but the current "
            f"version is {current}; read the policy again and retry against version {current}"
        )


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field: its path (``normal.max_leverage``) and what is wrong with it."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


class PolicyValidationError(PolicyError, ValueError):
    """A policy or a change that breaks the rules; ``violations`` names every bad field."""

    def __init__(self, violations: Iterable[FieldViolation]) -> None:
        self.violations: tuple[FieldViolation, ...] = tuple(violations)
        details = "; ".join(str(v) for v in self.violations) or "no details"
        super().__init__(f"invalid policy: {details}")


class PolicyUnavailable(PolicyError):
    """Redis cannot be reached (or has no policy and cannot be given one): nothing was written.

    Reads keep serving the last known policy; retry the write when health is HEALTHY again.
    """


class SnapshotCorrupted(PolicyError):
    """The snapshot file exists but cannot be trusted; it is never loaded."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"policy snapshot {path} is corrupted ({problem}); it was not loaded. Inspect it, "
            "then delete or replace it with a good snapshot"
        )
