"""``OperatorStore`` on one Redis or a Redis Cluster: the reads of ``reads`` and the writes of
``admin``, named by the keyspace (``runtime.core.operator_store``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from runtime.adapters.redis import admin, reads
from runtime.adapters.redis.client import RedisClient, is_cluster, ping
from runtime.adapters.redis.subscription import state_key
from runtime.core.keys import Keyspace
from runtime.core.operator_store import Entry, GroupFigures, GroupProgress

_DELETE_CHUNK = 500


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _field(group: Mapping[object, object], name: str) -> object:
    return group.get(name, group.get(name.encode()))


def _int(value: object) -> int:
    try:
        return int(_text(value) or 0)
    except ValueError:
        return 0


class RedisOperatorStore:
    """The operator's port on a Redis client (``client.open_client``: a cluster client for a
    ``redis+cluster://`` URL) and the keyspace its keys are named by."""

    def __init__(self, redis: RedisClient, keyspace: Keyspace) -> None:
        self.redis = redis
        self.keyspace = keyspace
        self.kind = "redis_cluster" if is_cluster(redis) else "redis"
        self._redrive = admin.DeadLetterRedrive(redis)

    async def ping(self) -> None:
        await ping(self.redis)

    async def range(
        self, key: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[Entry]:
        return await reads.xrange(self.redis, key, start, end, count)

    async def range_reverse(
        self, key: str, end: str = "+", start: str = "-", count: int | None = None
    ) -> list[Entry]:
        return await reads.xrevrange(self.redis, key, end, start, count)

    async def newest(self, key: str) -> Entry | None:
        return await reads.newest(self.redis, key)

    async def last_entry_ids(self, keys: Sequence[str]) -> dict[str, str]:
        return await reads.last_entry_ids(self.redis, keys)

    async def entries_by_id(
        self, key: str, entry_ids: Sequence[str]
    ) -> list[dict[bytes, bytes] | None]:
        return await reads.entries_by_id(self.redis, key, entry_ids)

    async def read_after(
        self, last_ids: Mapping[str, str], count: int, block_ms: int | None
    ) -> list[tuple[str, list[Entry]]]:
        return await reads.xread(self.redis, dict(last_ids), count, block_ms)

    async def stream_counters(self, key: str) -> tuple[str, int] | None:
        return await reads.stream_counters(self.redis, key)

    async def appended_since(self, key: str, last_id: str, counted: int) -> int:
        now = await reads.stream_counters(self.redis, key)
        return 0 if now is None else max(0, now[1] - counted)

    async def groups_each(self, keys: Sequence[str]) -> list[list[GroupFigures] | None]:
        replies = await reads.groups_each(self.redis, keys)
        return [
            None
            if reply is None
            else [
                GroupFigures(
                    name=_text(_field(group, "name")),
                    consumers=_int(_field(group, "consumers")),
                    pending=_int(_field(group, "pending")),
                    lag=None if _field(group, "lag") is None else _int(_field(group, "lag")),
                    last_delivered_id=_text(_field(group, "last-delivered-id")),
                )
                for group in reply
            ]
            for reply in replies
        ]

    async def read_positions(self, key: str) -> tuple[str, list[GroupProgress]] | None:
        return await reads.read_positions(self.redis, key)

    async def heartbeats_each(self, domains: Sequence[str]) -> list[list[int]]:
        replies = await reads.hvals_each(self.redis, [self.keyspace.heartbeat(d) for d in domains])
        return [[_int(value) for value in values] for values in replies]

    async def trace_items(self, trace_id: str) -> list[bytes]:
        return await reads.lrange_all(self.redis, self.keyspace.trace(trace_id))

    async def redriven(self, domain: str, entry_ids: Sequence[str]) -> list[bytes | None]:
        return await reads.hmget(self.redis, self.keyspace.redriven(domain), list(entry_ids))

    async def redrive(
        self, domain: str, entry_id: str, stream: str, payload: bytes, maxlen: int
    ) -> bool:
        return await self._redrive(
            self.keyspace.redriven(domain), stream, entry_id, payload, maxlen
        )

    async def purge_dead_letters(
        self,
        domain: str,
        entry_ids: Sequence[str],
        audit: Mapping[str, str],
        audit_maxlen: int,
    ) -> None:
        await admin.purge_dead_letters(
            self.redis,
            self.keyspace.dlq(domain),
            self.keyspace.redriven(domain),
            entry_ids,
            self.keyspace.audit(),
            audit,
            audit_maxlen,
        )

    def state_name(self, domain: str, partition: int = 0, partitions: int = 1) -> str:
        return state_key(self.keyspace, domain, partition, partitions)

    async def state_epoch(self, domain: str, partition: int = 0, partitions: int = 1) -> int:
        key = admin.state_epoch_key(self.keyspace, domain, partition, partitions)
        return await reads.counter(self.redis, key)

    async def store_repaired_state(
        self,
        domain: str,
        partition: int,
        partitions: int,
        state: bytes,
        record: Callable[[int], bytes],
        records_kept: int,
    ) -> int:
        return await admin.store_repaired_state(
            self.redis,
            state_key=state_key(self.keyspace, domain, partition, partitions),
            state=state,
            epoch_key=admin.state_epoch_key(self.keyspace, domain, partition, partitions),
            repairs_key=self.keyspace.state_repairs(),
            record=record,
            records_kept=records_kept,
        )

    async def delete_namespace(self) -> int:
        return await admin.delete_matching(self.redis, self.keyspace.pattern(), _DELETE_CHUNK)
