"""``Subscription`` and ``Committer`` on the in-memory broker, and its ``EventLog``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from runtime.adapters.memory.broker import (
    MemoryBroker,
    MemoryBrokerDown,
    MissingGroup,
    event_time_of,
)
from runtime.core.delivery import merge_by_time
from runtime.core.logs import get_logger
from runtime.core.transport import Commit, Delivery, GroupPosition, Lease, LeaseLost

_log = get_logger("runtime.adapters.memory")


def is_transient(exc: BaseException) -> bool:
    """The one transient error of this engine: the broker taken down on purpose."""
    return isinstance(exc, MemoryBrokerDown)


class MemoryEventLog:
    """``EventLog`` on the in-memory broker: each record goes to its event type's stream."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    async def append(self, records: Sequence[tuple[str, bytes]]) -> list[str]:
        broker = self.broker
        broker.check()  # all or nothing: refuse before the first append
        logical = broker.scheduler is not None
        return [
            broker.append(
                broker.stream_of(topic),
                data,
                event_time_of(data) if logical else (0, 0),
            ).decode()
            for topic, data in records
        ]

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    async def close(self) -> None:
        return None


class MemorySubscription:
    """One consumer of one group on a domain's input streams, in memory."""

    def __init__(
        self,
        broker: MemoryBroker,
        *,
        domain: str,
        group: str,
        consumer: str,
        streams: Sequence[str],
        start_id: str = "0",
    ) -> None:
        self.broker = broker
        self.domain = domain
        self.group = group
        self.consumer = consumer
        self._streams = list(streams)
        self.start_id = start_id

    @property
    def streams(self) -> Sequence[str]:
        return self._streams

    async def open(self) -> None:
        for stream in self._streams:
            self.broker.create_group(stream, self.group, self.start_id)

    async def fetch(self, *, pending: bool, count: int, block_ms: int) -> list[Delivery]:
        broker = self.broker
        if pending:
            deliveries = [
                delivery
                for stream in self._streams
                for delivery in broker.read_pending(stream, self.group, self.consumer, count)
            ]
        elif broker.scheduler is not None:
            await broker.scheduler.wait(self.group, block_ms / 1000)
            deliveries = self._granted(count)
        else:
            deliveries = self._read_new(count)
            if deliveries:
                await asyncio.sleep(0)  # a backlog must not starve the other tasks (stop())
            else:
                await broker.wait_for_append(block_ms / 1000)
                deliveries = self._read_new(count)
        merge_by_time(deliveries)
        return deliveries

    def _read_new(self, count: int) -> list[Delivery]:
        return [
            delivery
            for stream in self._streams
            for delivery in self.broker.read_new(stream, self.group, self.consumer, count)
        ]

    def _granted(self, count: int) -> list[Delivery]:
        broker = self.broker
        assert broker.scheduler is not None
        broker.check()
        return [
            broker.deliver(stream, self.group, self.consumer, entry_id)
            for stream, entry_id in broker.scheduler.take(self.group, count)
        ]

    async def take_over(self) -> int:
        """Make every pending entry of the group this consumer's (a takeover is not a
        delivery: counts stay as they were)."""
        self.broker.check()
        taken = 0
        for stream in self._streams:
            ids = list(self.broker.pending(stream, self.group))
            taken += len(self.broker.claim(stream, self.group, self.consumer, ids, count=False))
        return taken

    async def redeliver(self, delivery: Delivery) -> bool:
        claimed = self.broker.claim(
            delivery.stream, self.group, self.consumer, [delivery.entry_id], count=True
        )
        if not claimed:
            return False
        delivery.deliveries = claimed[0].deliveries
        return True

    async def processed(self, event_ids: Sequence[str]) -> set[str]:
        self.broker.check()
        marks = self.broker.processed_marks.get(self.domain)
        if not marks:
            return set()
        return {event_id for event_id in event_ids if event_id in marks}

    async def recreate(
        self, error: BaseException, after: Mapping[str, bytes]
    ) -> list[tuple[str, bytes]] | None:
        if not isinstance(error, MissingGroup):
            return None
        recreated: list[tuple[str, bytes]] = []
        for stream in self._streams:
            start = after.get(stream, self.start_id.encode())
            if self.broker.create_group(stream, self.group, start):
                recreated.append((stream, start))
        return recreated

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    async def positions(self) -> list[GroupPosition]:
        return [
            GroupPosition(
                stream,
                self.group,
                len(self.broker.pending(stream, self.group)),
                self.broker.lag(stream, self.group),
            )
            for stream in self._streams
        ]

    async def close(self) -> None:
        return None


class MemoryCommitter:
    """Commits one domain partition's batches: ``MemoryBroker.apply_commit``, atomic by
    construction (one synchronous step)."""

    def __init__(self, broker: MemoryBroker, *, domain: str, group: str, state_key: str) -> None:
        self.broker = broker
        self.domain = domain
        self.group = group
        self.state_key = state_key

    async def load_state(self) -> bytes | None:
        self.broker.check()
        return self.broker.states.get(self.state_key)

    async def commit(self, commit: Commit) -> None:
        lease = commit.lease
        if lease is not None and self.broker.leases.get(self.group) != lease:
            raise LeaseLost(f"{self.domain}: the lease of {self.group} is no longer {lease}")
        self.broker.apply_commit(self.domain, self.group, self.state_key, commit)

    async def acquire(self, holder: str, ttl_ms: int) -> Lease | None:
        """One process, one owner per group: a lease is held until released (no clock)."""
        self.broker.check()
        current = self.broker.leases.get(self.group)
        if current is not None and current.holder != holder:
            return None
        if current is None:
            self.broker.fencing_token += 1
            current = Lease(holder, self.broker.fencing_token)
            self.broker.leases[self.group] = current
        return current

    async def renew(self, lease: Lease, ttl_ms: int) -> bool:
        return self.broker.leases.get(self.group) == lease

    async def release(self, lease: Lease) -> None:
        if self.broker.leases.get(self.group) == lease:
            del self.broker.leases[self.group]

    async def heartbeat(self, consumer: str, at_ms: int) -> None:
        self.broker.check()
        self.broker.heartbeats.setdefault(self.domain, {})[consumer] = at_ms

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    async def close(self) -> None:
        return None
