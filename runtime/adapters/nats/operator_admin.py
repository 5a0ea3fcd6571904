"""The writes of ``OperatorStore`` on JetStream (``runtime.core.operator_store``): dead-letter
redrive and purge, state repair, deleting a namespace."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from runtime.adapters.nats.operator_reads import JetStreamReads


class JetStreamOperatorStore(JetStreamReads):
    """``OperatorStore`` on one JetStream engine (sharing its connection)."""

    async def redriven(self, domain: str, entry_ids: Sequence[str]) -> list[bytes | None]:
        raise NotImplementedError

    async def redrive(
        self, domain: str, entry_id: str, stream: str, payload: bytes, maxlen: int
    ) -> bool:
        raise NotImplementedError

    async def purge_dead_letters(
        self,
        domain: str,
        entry_ids: Sequence[str],
        audit: Mapping[str, str],
        audit_maxlen: int,
    ) -> None:
        raise NotImplementedError

    def state_name(self, domain: str, partition: int = 0, partitions: int = 1) -> str:
        raise NotImplementedError

    async def state_epoch(self, domain: str, partition: int = 0, partitions: int = 1) -> int:
        raise NotImplementedError

    async def store_repaired_state(
        self,
        domain: str,
        partition: int,
        partitions: int,
        state: bytes,
        record: Callable[[int], bytes],
        records_kept: int,
    ) -> int:
        raise NotImplementedError

    async def delete_namespace(self) -> int:
        raise NotImplementedError
