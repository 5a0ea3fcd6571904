"""Producer-side partitioning: which log of an event type carries an event (DESIGN section 8).

An event type's log is split into N partitions, N set per type in configuration (1 unless
told). The producer picks the partition, ``crc32(partition_key) mod N``, so one key always
lands in one partition, in order; a partition runner reads only the partitions it owns, so
adding partitions spreads reads instead of multiplying them.

A *topic* names one partition of one type, the same on every engine: the type's name when it
has one partition (``market.tick``: the stream names of an unpartitioned system do not
change) and ``<type>:<k>`` otherwise (``market.tick:3``). Engines turn a topic into their own
name (a Redis stream key, a JetStream subject).

A domain split P ways (``RunnerConfig.partitions``) reads, of each input type with N
partitions, those k with ``k mod P == p``; N must then be a multiple of P, so that
``crc32(key) mod N mod P == crc32(key) mod P`` and the partition that holds a key's state
reads every event of that key. A type with one partition is read whole by every runner, which
keeps only its own keys (the consumer-side rule of ``delivery.partition_of``). A domain that
keeps global state (risk_safety, portfolio, analytics) runs unsplit and reads every partition,
each key still in order: one key lives in one partition.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

MAX_PARTITIONS = 1024
TOPIC_SEPARATOR = ":"


def partition_of(partition_key: str, partitions: int) -> int:
    """Which of ``partitions`` owns a key: stable across processes, hosts and Python versions."""
    if partitions == 1:
        return 0
    return zlib.crc32(partition_key.encode()) % partitions


def topic_name(event_type: str, partition: int, partitions: int) -> str:
    """The topic of partition ``partition`` of an event type split ``partitions`` ways."""
    return event_type if partitions == 1 else f"{event_type}{TOPIC_SEPARATOR}{partition}"


def event_type_of(topic: str) -> str:
    """The event type a topic carries (``market.tick:3`` -> ``market.tick``)."""
    return topic.split(TOPIC_SEPARATOR, 1)[0]


class Partitioning:
    """The partition count of every event type's log; 1 for a type it does not name.

    Every process of one system must be given the same counts: they decide where producers
    write and where consumers read.
    """

    __slots__ = ("_counts",)

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        checked: dict[str, int] = {}
        for event_type, count in (counts or {}).items():
            if not event_type or TOPIC_SEPARATOR in event_type:
                raise ValueError(
                    f"event type {event_type!r}: a name without ':' is needed to partition it"
                )
            if isinstance(count, bool) or not isinstance(count, int):
                raise ValueError(f"{event_type}: partitions must be a whole number; got {count!r}")
            if not 1 <= count <= MAX_PARTITIONS:
                raise ValueError(
                    f"{event_type}: partitions must be between 1 and {MAX_PARTITIONS}; got {count}"
                )
            if count > 1:
                checked[event_type] = count
        self._counts = checked

    @classmethod
    def parse(cls, spec: str) -> Partitioning:
        """``"market.tick=4,ai.signal=4"`` (what ``--stream-partitions`` takes); "" for none."""
        counts: dict[str, int] = {}
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            name, sep, value = part.partition("=")
            name, value = name.strip(), value.strip()
            if not sep or not name or not value.isdigit() or not value.isascii():
                raise ValueError(
                    f"partitions {part!r}: expected TYPE=N with N a whole number, "
                    "as in market.tick=4"
                )
            if name in counts:
                raise ValueError(f"partitions: {name} is given twice")
            counts[name] = int(value)
        return cls(counts)

    @property
    def counts(self) -> dict[str, int]:
        """The types split in more than one partition, with their counts."""
        return dict(self._counts)

    def count(self, event_type: str) -> int:
        return self._counts.get(event_type, 1)

    def topic(self, event_type: str, partition_key: str) -> str:
        """The topic an event of this type and key is appended to (the hot path: one dict
        lookup for an unpartitioned type)."""
        count = self._counts.get(event_type)
        if count is None:
            return event_type
        return f"{event_type}{TOPIC_SEPARATOR}{zlib.crc32(partition_key.encode()) % count}"

    def topics(self, event_type: str) -> list[str]:
        """Every topic of an event type, in partition order."""
        count = self.count(event_type)
        return [topic_name(event_type, k, count) for k in range(count)]

    def topics_read_by(self, event_type: str, partition: int, partitions: int) -> list[str]:
        """The topics of ``event_type`` that partition ``partition`` of a domain split
        ``partitions`` ways reads (see the module doc)."""
        count = self.count(event_type)
        if count == 1 or partitions == 1:
            return self.topics(event_type)
        if count % partitions:
            raise ValueError(
                f"{event_type} has {count} partitions; a domain split {partitions} ways reads "
                f"it only when its partitions are a multiple of {partitions} (or 1)"
            )
        return [topic_name(event_type, k, count) for k in range(partition, count, partitions)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Partitioning) and other._counts == self._counts

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._counts.items())))

    def __repr__(self) -> str:
        spec = ",".join(f"{name}={count}" for name, count in sorted(self._counts.items()))
        return f"Partitioning({spec!r})"


UNPARTITIONED = Partitioning()
