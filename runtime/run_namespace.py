"""Which namespace a ``quantum run`` works in, and whether it is the run's own to delete.

Without ``--namespace`` a run is a fresh, reproducible demo: it takes a namespace no earlier
run used (``quantum-run-<UTC time>-<random>``), so its streams, consumer groups, domain state
and policy start empty (the policy from its defaults, PnL from the starting equity), and it
deletes that namespace and its policy snapshot when it ends, so nothing piles up in the broker
or in the state directory. With ``--namespace NAME`` the run is persistent: it resumes whatever
NAME holds (positions, policy, unread events) and leaves it there for the next run.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from runtime.core.keys import Keyspace
from runtime.core.operator_store import OperatorStore
from runtime.core.policy.snapshot import SnapshotFile

FRESH_PREFIX = "quantum-run-"


def fresh_namespace(now: datetime | None = None) -> str:
    """A namespace no other run has: the start time (sortable, readable) and 32 random bits."""
    at = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{FRESH_PREFIX}{at}-{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class RunNamespace:
    """The keyspace of one run and whether the run owns it (deletes it at the end)."""

    keyspace: Keyspace
    owned: bool

    @classmethod
    def choose(cls, namespace: str | None) -> RunNamespace:
        """``--namespace NAME``: that one, kept; none given: a fresh one, owned by this run."""
        if namespace is None:
            return cls(Keyspace(fresh_namespace()), owned=True)
        return cls(Keyspace(namespace), owned=False)

    @property
    def name(self) -> str:
        return self.keyspace.namespace

    async def discard(self, store: OperatorStore, state_dir: Path) -> int:
        """Delete everything an owned namespace stored (``store``: the run's engine's) and its
        policy snapshot; how many keys (streams and buckets on JetStream) were deleted.

        A namespace given with ``--namespace`` is never touched (returns 0).
        """
        if not self.owned:
            return 0
        deleted = await store.delete_namespace()
        SnapshotFile(state_dir, self.name).path.unlink(missing_ok=True)
        return deleted
