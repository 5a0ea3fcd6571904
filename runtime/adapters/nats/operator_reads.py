"""The reads of ``OperatorStore`` on JetStream (``runtime.core.operator_store``).

Keys are subjects (``keys.JetStreamKeyspace``); entry ids ``<ms>-<seq>`` (``log.entry_id``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from runtime.core.operator_store import Entry, GroupFigures, GroupProgress

if TYPE_CHECKING:
    from runtime.adapters.nats.engine import JetStreamEngine


class JetStreamReads:
    kind = "jetstream"

    def __init__(self, engine: JetStreamEngine) -> None:
        self.engine = engine
        self.connection = engine.connection
        self.names = engine.names
        self.keyspace = engine.keyspace

    async def ping(self) -> None:
        raise NotImplementedError

    async def range(
        self, key: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[Entry]:
        raise NotImplementedError

    async def range_reverse(
        self, key: str, end: str = "+", start: str = "-", count: int | None = None
    ) -> list[Entry]:
        raise NotImplementedError

    async def newest(self, key: str) -> Entry | None:
        raise NotImplementedError

    async def last_entry_ids(self, keys: Sequence[str]) -> dict[str, str]:
        raise NotImplementedError

    async def entries_by_id(
        self, key: str, entry_ids: Sequence[str]
    ) -> list[dict[bytes, bytes] | None]:
        raise NotImplementedError

    async def read_after(
        self, last_ids: Mapping[str, str], count: int, block_ms: int | None
    ) -> list[tuple[str, list[Entry]]]:
        raise NotImplementedError

    async def stream_counters(self, key: str) -> tuple[str, int] | None:
        raise NotImplementedError

    async def groups_each(self, keys: Sequence[str]) -> list[list[GroupFigures] | None]:
        raise NotImplementedError

    async def read_positions(self, key: str) -> tuple[str, list[GroupProgress]] | None:
        raise NotImplementedError

    async def heartbeats_each(self, domains: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    async def trace_items(self, trace_id: str) -> list[bytes]:
        raise NotImplementedError
