"""Key names on Redis Cluster: the single-Redis names with hash tags, so that what one step
must touch atomically lives in one slot (DESIGN section 8).

A Redis Cluster hashes a key to one of 16384 slots by its hash tag (the text between the first
``{`` and the next ``}``) when it has one, else by the whole key; a MULTI/EXEC, a script or a
multi-key command must keep to one slot. The tags:

- ``{<group>}``, a domain partition (its consumer group's name, ``risk_safety`` or
  ``tick_counter.p0of3``): its state, processed marks, lease, fencing-token counter and
  state epoch — everything its commit writes and WATCHes. For an unsplit domain the group is
  the domain, so its dead letters and heartbeat (``{<domain>}``) share the slot too;
- ``{<namespace>}``: the policy (hash, history, the ``policy.updated`` stream, so the policy
  write script keeps to one slot), the trace index (every trace list and the registry that
  bounds them: one slot, so a prune deletes in one command), the audit streams;
- a stream per topic: ``{<topic>}`` for an unpartitioned type; for partition k of a type split
  N ways, a tag chosen so that its slot falls in the middle of the k-th of N equal slot ranges
  (``spread_tag``), so the partitions of a type spread evenly over the masters (a cluster made
  by ``redis-cli --cluster create`` gives each master one contiguous range).

Every key still starts with ``<namespace>:``, so ``pattern()`` matches a whole system. The
names differ from a single Redis's: a system moves between the two by replay, not by copy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from runtime.core.keys import PROCESSED_BUCKET_CHARS, Keyspace
from runtime.core.partitioning import TOPIC_SEPARATOR, UNPARTITIONED, Partitioning, event_type_of

SLOTS = REDIS_CLUSTER_HASH_SLOTS
# Streams that belong with the namespace's shared keys: the policy write script appends to
# this one in the same step as it writes the policy hash and history.
SHARED_STREAMS = ("policy.updated",)


def slot_of(key: str | bytes) -> int:
    """The cluster slot of a key (CRC16 of its hash tag, or of the whole key)."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


@functools.lru_cache(maxsize=4096)
def spread_tag(topic: str, partition: int, partitions: int) -> str:
    """The hash tag of partition ``partition`` of a topic split ``partitions`` ways: ``topic``
    itself, or ``topic~<n>`` with the smallest n, whose slot lies in the middle half of the
    partition's share of the slots, ``[k*S/N, (k+1)*S/N)`` (the middle, so that a master's
    range boundary near a share's edge does not matter)."""
    share = SLOTS / partitions
    low = int(partition * share + share / 4)
    high = max(low + 1, int((partition + 1) * share - share / 4))
    candidate, n = topic, 0
    while not low <= slot_of(candidate) < high:
        n += 1
        candidate = f"{topic}~{n}"
    return candidate


@dataclass(frozen=True, slots=True)
class ClusterKeyspace(Keyspace):
    """``Keyspace`` with hash tags; ``partitioning`` says how many partitions each stream
    type has (its streams' tags spread over the slot ranges by it)."""

    partitioning: Partitioning = UNPARTITIONED

    @classmethod
    def of(cls, keyspace: Keyspace, partitioning: Partitioning | None = None) -> ClusterKeyspace:
        """The cluster keyspace of a namespace (``keyspace`` as it is when already one)."""
        if isinstance(keyspace, ClusterKeyspace) and (
            partitioning is None or partitioning == keyspace.partitioning
        ):
            return keyspace
        return cls(keyspace.namespace, partitioning or UNPARTITIONED)

    # -- tags -------------------------------------------------------------------------------

    def _shared(self, name: str) -> str:
        """A key in the namespace's shared slot (policy, trace index, audit)."""
        return f"{self.namespace}:{name}:{{{self.namespace}}}"

    def stream_tag(self, topic: str) -> str:
        """The hash tag of a topic's stream (see the module doc)."""
        event_type = event_type_of(topic)
        count = self.partitioning.count(event_type)
        _, sep, index = topic.partition(TOPIC_SEPARATOR)
        if count == 1 or not sep or not index.isdigit() or int(index) >= count:
            return topic
        return spread_tag(topic, int(index), count)

    # -- Keyspace, tagged -------------------------------------------------------------------

    def stream(self, event_type: str) -> str:
        if event_type in SHARED_STREAMS:
            return self._shared(f"stream:{event_type}")
        return f"{self.namespace}:stream:{{{self.stream_tag(event_type)}}}"

    def dlq(self, domain: str) -> str:
        return f"{self.namespace}:dlq:{{{domain}}}"

    def dead_lettered(self, domain: str) -> str:
        """The entries a domain dead-lettered lately ("<stream> <entry id>"), in its dead-letter
        stream's slot: a commit redone after a crash does not dead-letter an entry twice."""
        return f"{self.dlq(domain)}:entries"

    def trace(self, trace_id: str) -> str:
        return self._shared(f"trace:{trace_id}")

    def trace_registry(self) -> str:
        return self._shared("traces")

    def processed(self, domain: str) -> str:
        """Marks prefix of a domain, or (what the cluster committer passes) of a domain
        partition's group: the marks then share the partition's slot."""
        return f"{self.namespace}:processed:{{{domain}}}"

    def processed_bucket(self, domain: str, event_id: str) -> str:
        return f"{self.processed(domain)}:{event_id[:PROCESSED_BUCKET_CHARS]}"

    def heartbeat(self, domain: str) -> str:
        return f"{self.namespace}:heartbeat:{{{domain}}}"

    def policy(self) -> str:
        return self._shared("policy")

    def policy_history(self) -> str:
        return self._shared("policy:history")

    def state(self, domain: str, partition: int = 0, partitions: int = 1) -> str:
        return f"{self.namespace}:state:{{{self.group(domain, partition, partitions)}}}"

    def lease(self, domain: str, partition: int = 0, partitions: int = 1) -> str:
        return f"{self.namespace}:lease:{{{self.group(domain, partition, partitions)}}}"

    def fencing_tokens(self) -> str:
        return self._shared("lease-tokens")

    def fencing_tokens_of(self, group: str) -> str:
        """The token counter of one domain partition, in its lease's slot (the acquire script
        touches both). Tokens strictly increase per partition, which is what fencing needs."""
        return f"{self.namespace}:lease-tokens:{{{group}}}"

    def redriven(self, domain: str) -> str:
        return f"{self.dlq(domain)}:redriven"

    def state_epoch(self, domain: str) -> str:
        """The state epoch of a domain, or (what the cluster committer WATCHes) of a domain
        partition's group: in its state's slot. For an unsplit domain the two are one key."""
        return f"{self.namespace}:state-epoch:{{{domain}}}"

    def state_repairs(self) -> str:
        return self._shared("audit:state-repairs")

    def audit(self) -> str:
        return self._shared("audit")
