"""How the PolicyStore is doing, for health checks and the control plane."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path


class PolicyHealth(enum.StrEnum):
    """HEALTHY: in step with Redis. DEGRADED: Redis lost, reads serve the last known policy."""

    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"


@dataclass(frozen=True, slots=True)
class PolicyStoreStatus:
    """A point-in-time view of the store."""

    health: PolicyHealth
    version: int
    # Seconds since the cache was last confirmed against Redis.
    seconds_since_sync: float
    # Why the store is DEGRADED (the last Redis error), empty when HEALTHY.
    last_error: str
    snapshot_path: Path
    # A corrupted snapshot found at start-up (moved aside), empty when none.
    snapshot_problem: str
