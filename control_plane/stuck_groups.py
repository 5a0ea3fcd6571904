"""Consumer groups that stopped moving while behind: health says so (DEGRADED).

The retention (``runtime.adapters.redis.retention``) stops letting such a group hold its
stream after the same horizon, logs ``consumer_group_stuck`` and sets
``quantum_consumer_group_stuck``; the health check sees it here, from the groups' positions
alone, in whichever process serves the control plane.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from quantum.control.v1.runtime_service_pb2 import ConsumerGroupInfo

from runtime.adapters.redis.retention import DEFAULT_STUCK_AFTER_S


@dataclass(frozen=True, slots=True)
class StuckGroup:
    """A group with entries to handle that has not moved for ``still_for_s``."""

    stream: str
    group: str
    behind: int
    still_for_s: float


class StuckGroupWatch:
    """Remembers each group's position between health checks and when it last moved."""

    def __init__(self, stuck_after_s: float = DEFAULT_STUCK_AFTER_S) -> None:
        if stuck_after_s <= 0:
            raise ValueError(f"stuck_after_s must be positive; got {stuck_after_s}")
        self.stuck_after_s = stuck_after_s
        self._seen: dict[tuple[str, str], tuple[str, float]] = {}

    def update(
        self, groups: Iterable[ConsumerGroupInfo], now: float | None = None
    ) -> list[StuckGroup]:
        """Note the groups' positions; return those still for the horizon while behind."""
        now = time.monotonic() if now is None else now
        stuck: list[StuckGroup] = []
        current: dict[tuple[str, str], tuple[str, float]] = {}
        for info in groups:
            key = (info.stream, info.group)
            behind = info.lag + info.pending
            position = f"{info.last_delivered_id}/{info.pending}"
            seen = self._seen.get(key)
            moved_at = now if seen is None or seen[0] != position or behind == 0 else seen[1]
            current[key] = (position, moved_at)
            if behind and now - moved_at >= self.stuck_after_s:
                stuck.append(StuckGroup(info.stream, info.group, behind, now - moved_at))
        self._seen = current
        return stuck
