"""What operators and a run's summary read and change in an engine's store (DESIGN section 7).

The control plane (ReadEvents, replays, the live feed, traces, dead letters, state repair,
health) and the composition root (the run summary, the feed's resume point, the drain at
stop, deleting a run's namespace) read an engine's log and records through this one port;
each engine answers it on its own broker (``Engine.operator_store()``: the adapters'
``operator_store`` modules), so that nothing above the adapters speaks a broker's commands.
The store shares the engine's connections: it lives as long as the engine.

Everything is named by the engine's keyspace (``Engine.keyspace``): ``keyspace.stream(topic)``
names a topic's log, ``keyspace.dlq(domain)`` a domain's dead letters, and so on; each engine
spells those names its own way (hash tags on a Redis Cluster, subjects on JetStream).

Entry ids read ``<ms>-<seq>`` on every engine and order the entries of one log; a range's
bounds are ids, ``-`` and ``+`` for the ends, and a ``(`` before an id excludes it. A bound
of a time only (``<ms>``, or ``<ms>-0``) means that time on every engine; any other
``<ms>-<seq>`` bound must be an id this store gave (JetStream compares its sequence). A
stored event's fields hold its envelope under ``envelope``; a dead letter's the fields of
``runtime.core.dead_letters.DeadLetter.fields``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from runtime.core.dead_letters import DeadLetter

Entry = tuple[str, dict[bytes, bytes]]


class OperationUnsupported(Exception):
    """The engine cannot do this operator's request (the message says why and what can)."""


class StoreContended(Exception):
    """A write kept losing to concurrent writers and gave up; the request can be retried."""


@dataclass(frozen=True, slots=True)
class GroupFigures:
    """One consumer group of one log: who reads it and how far behind it is."""

    name: str
    consumers: int
    pending: int  # delivered and not yet acknowledged
    lag: int | None  # entries not yet delivered (None: the engine cannot tell)
    last_delivered_id: str


@dataclass(frozen=True, slots=True)
class GroupProgress:
    """Where one consumer group of a log stands."""

    group: str
    last_delivered_id: str
    pending: int


class OperatorStore(Protocol):
    """An engine's log and records as operators see them (see the module doc)."""

    kind: str  # "redis", "redis_cluster" or "jetstream"

    async def ping(self) -> None:
        """Return when the broker answers; raise when it does not."""
        ...

    # --- logs -------------------------------------------------------------------------
    async def range(
        self, key: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[Entry]:
        """Entries of a log from ``start`` to ``end`` (inclusive unless "("), oldest first."""
        ...

    async def range_reverse(
        self, key: str, end: str = "+", start: str = "-", count: int | None = None
    ) -> list[Entry]:
        """Entries of a log from ``end`` down to ``start``, newest first."""
        ...

    async def newest(self, key: str) -> Entry | None:
        """The last entry of a log; None when it is empty or missing."""
        ...

    async def last_entry_ids(self, keys: Sequence[str]) -> dict[str, str]:
        """Each log's last entry id ("0-0" when it is empty or missing)."""
        ...

    async def entries_by_id(
        self, key: str, entry_ids: Sequence[str]
    ) -> list[dict[bytes, bytes] | None]:
        """The fields of each named entry of a log (None where there is no such entry)."""
        ...

    async def read_after(
        self, last_ids: Mapping[str, str], count: int, block_ms: int | None
    ) -> list[tuple[str, list[Entry]]]:
        """New entries of several logs after ``last_ids``, waiting up to ``block_ms`` (> 0)
        for some (None: not at all; 0 is not a way to wait forever here); the logs that have
        some, each with up to ``count``."""
        ...

    async def stream_counters(self, key: str) -> tuple[str, int] | None:
        """A log's position: its last id and a count of its entries (on Redis the entries
        ever appended, on JetStream those it holds); None when there is no such log. Only
        ``appended_since`` compares two of them."""
        ...

    async def appended_since(self, key: str, last_id: str, counted: int) -> int:
        """How many entries were appended to a log after the position ``stream_counters``
        gave (``"0-0"``, 0: from the beginning). Exact on Redis (its entries-added counter,
        trimming or not); on JetStream the entries still held after that position (exact
        unless more were appended since than the subject keeps)."""
        ...

    # --- consumers ----------------------------------------------------------------------
    async def groups_each(self, keys: Sequence[str]) -> list[list[GroupFigures] | None]:
        """The consumer groups of each log (None where the log is missing)."""
        ...

    async def read_positions(self, key: str) -> tuple[str, list[GroupProgress]] | None:
        """The log's last id and where each of its groups stands; None when the log is
        missing or empty."""
        ...

    async def heartbeats_each(self, domains: Sequence[str]) -> list[list[int]]:
        """Each domain's consumers' last heartbeats (ms since the epoch)."""
        ...

    # --- traces -------------------------------------------------------------------------
    async def trace_items(self, trace_id: str) -> list[bytes]:
        """The envelopes (as stored) of the trace index's entry for ``trace_id``."""
        ...

    # --- dead letters -------------------------------------------------------------------
    async def redriven(self, domain: str, entry_ids: Sequence[str]) -> list[bytes | None]:
        """For each of a domain's dead letters, the id of the entry its redrive appended
        (None: not redriven)."""
        ...

    async def redrive(
        self, domain: str, entry_id: str, stream: str, payload: bytes, maxlen: int
    ) -> bool:
        """Append ``payload`` (the letter's envelope) to the log ``stream`` once: False, and
        nothing appended, when this letter was redriven before."""
        ...

    async def purge_dead_letters(
        self,
        domain: str,
        entry_ids: Sequence[str],
        audit: Mapping[str, str],
        audit_maxlen: int,
    ) -> None:
        """Delete the letters and their redrive notes and record ``audit`` in the audit log
        (the audit entry first, or in the same transaction)."""
        ...

    # --- state repair -------------------------------------------------------------------
    def state_name(self, domain: str, partition: int = 0, partitions: int = 1) -> str:
        """Where this domain partition's state is stored, as a repair record names it."""
        ...

    async def state_epoch(self, domain: str, partition: int = 0, partitions: int = 1) -> int:
        """How many times this domain partition's state was repaired (its epoch)."""
        ...

    async def store_repaired_state(
        self,
        domain: str,
        partition: int,
        partitions: int,
        state: bytes,
        record: Callable[[int], bytes],
        records_kept: int,
    ) -> int:
        """Replace the partition's state, raise its epoch (runners holding it stop and
        reload) and append ``record(new_epoch)`` to the repair log; the new epoch."""
        ...

    # --- a run's namespace --------------------------------------------------------------
    async def delete_namespace(self) -> int:
        """Delete everything stored under the keyspace's namespace; how many things."""
        ...


# ``Engine.read`` and ``Engine.dead_letters``, the same on every engine that has a store.


async def read_log(store: OperatorStore, key: str, count: int) -> list[tuple[str, bytes]]:
    """A log's first ``count`` entries: (entry id, envelope bytes as stored)."""
    return [
        (entry, fields.get(b"envelope", b""))
        for entry, fields in await store.range(key, count=count)
    ]


async def read_letters(store: OperatorStore, key: str, count: int) -> list[DeadLetter]:
    """A dead-letter log's first ``count`` letters."""
    return [
        DeadLetter.from_fields(entry, fields)
        for entry, fields in await store.range(key, count=count)
    ]
