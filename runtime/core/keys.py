"""Every Redis key the system uses, in one place, so that a namespace isolates a whole system.

Tests give each run its own namespace; production uses the default, ``quantum``, which yields
the key names of the design (``quantum:stream:<type>``, ``quantum:dlq:<domain>``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Names the keys of one system instance."""

    namespace: str = "quantum"

    def __post_init__(self) -> None:
        if not _NAMESPACE_RE.match(self.namespace):
            raise ValueError(
                f"namespace {self.namespace!r} must be 1-64 characters of letters, digits, "
                "'_', '.' or '-'"
            )

    def stream(self, event_type: str) -> str:
        """The stream that carries one event type."""
        return f"{self.namespace}:stream:{event_type}"

    def dlq(self, domain: str) -> str:
        """The dead-letter stream of one domain."""
        return f"{self.namespace}:dlq:{domain}"

    def trace(self, trace_id: str) -> str:
        """The trace index of one trace id."""
        return f"{self.namespace}:trace:{trace_id}"

    def processed(self, domain: str) -> str:
        """Prefix of the processed-id records that make a domain's effects happen once."""
        return f"{self.namespace}:processed:{domain}"

    def heartbeat(self, domain: str) -> str:
        """The heartbeat hash of one domain (consumer name -> last beat)."""
        return f"{self.namespace}:heartbeat:{domain}"

    def policy(self) -> str:
        """The policy hash (the current policy and its version)."""
        return f"{self.namespace}:policy"

    def policy_history(self) -> str:
        """The policy history (change records, one per version)."""
        return f"{self.namespace}:policy:history"

    def group(self, domain: str) -> str:
        """The consumer group name a domain uses on every stream it reads."""
        return domain

    def partition_group(self, domain: str, partition: int = 0, partitions: int = 1) -> str:
        """The consumer group of one partition of a domain (the plain group when unsplit)."""
        base = self.group(domain)
        return base if partitions == 1 else f"{base}.p{partition}of{partitions}"

    def state(self, domain: str, partition: int = 0, partitions: int = 1) -> str:
        """Where the actor state of a domain (partition) is kept."""
        base = f"{self.namespace}:state:{domain}"
        return base if partitions == 1 else f"{base}.p{partition}of{partitions}"

    def pattern(self) -> str:
        """A SCAN pattern that matches every key of this namespace."""
        return f"{self.namespace}:*"
