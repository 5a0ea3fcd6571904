"""Every Redis key the system uses, in one place, so that a namespace isolates a whole system.

Tests give each run its own namespace; production uses the default, ``quantum``, which yields
the key names of the design (``quantum:stream:<type>``, ``quantum:dlq:<domain>``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# A processed-marks set holds the ids that share their first 7 characters: a ULID's time with
# 15 bits of milliseconds dropped, about 33 seconds of events, so a set expires soon after
# the dedupe horizon instead of holding a long bucket alive.
PROCESSED_BUCKET_CHARS = 7


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

    def group(self, domain: str, partition: int = 0, partitions: int = 1) -> str:
        """The consumer group a domain (one of its partitions) uses on every stream it reads."""
        return domain if partitions == 1 else f"{domain}.p{partition}of{partitions}"

    def state(self, domain: str, partition: int = 0, partitions: int = 1) -> str:
        """The state snapshot of a domain partition, written by its commits."""
        return f"{self.namespace}:state:{self.group(domain, partition, partitions)}"

    def processed_bucket(self, domain: str, event_id: str) -> str:
        """The set holding the processed mark of ``event_id`` (about 33 seconds of ids each:
        ``PROCESSED_BUCKET_CHARS``). The mark itself is the rest of the id."""
        return f"{self.processed(domain)}:{event_id[:PROCESSED_BUCKET_CHARS]}"

    def trace_registry(self) -> str:
        """Every indexed trace id, scored by when it was first indexed (bounds the index)."""
        return f"{self.namespace}:traces"

    def lease(self, domain: str, partition: int = 0, partitions: int = 1) -> str:
        """The ownership lease of a domain partition (holder and fencing token)."""
        return f"{self.namespace}:lease:{self.group(domain, partition, partitions)}"

    def fencing_tokens(self) -> str:
        """The counter fencing tokens are drawn from (strictly increasing per namespace)."""
        return f"{self.namespace}:lease-tokens"

    def redriven(self, domain: str) -> str:
        """Redriven dead letters of a domain: dead-letter entry id -> new entry id."""
        return f"{self.dlq(domain)}:redriven"

    def state_epoch(self, domain: str) -> str:
        """A counter bumped whenever a domain's saved state is replaced from outside its runner
        (a state repair): a runner that sees it change reloads its state before committing."""
        return f"{self.namespace}:state-epoch:{domain}"

    def state_repairs(self) -> str:
        """The record of every state repair (a stream, newest last)."""
        return f"{self.namespace}:audit:state-repairs"

    def audit(self) -> str:
        """The stream of audited operator actions beside the policy history (dead-letter
        purges): who, what, when."""
        return f"{self.namespace}:audit"

    def partition_group(self, domain: str, partition: int = 0, partitions: int = 1) -> str:
        """The consumer group of one partition of a domain (the plain group when unsplit)."""
        return self.group(domain, partition, partitions)

    def pattern(self) -> str:
        """A SCAN pattern that matches every key of this namespace."""
        return f"{self.namespace}:*"


def processed_mark(event_id: str) -> str:
    """What a processed-marks set holds for ``event_id``: its id less the bucket's prefix."""
    return event_id[PROCESSED_BUCKET_CHARS:]
