"""The writes an operator's requests make, and the cleanup of a run's namespace.

Each function is one Redis transaction (or script) the control plane or the composition
root asks for by what it does: store a repaired state, redrive or purge dead letters,
delete a namespace. The keys are the caller's (``runtime.core.keys``); the commands are
spelt here, the only package that speaks Redis.

On a Redis Cluster a transaction or a script keeps to one slot, and each of these writes
touches two: the operator's record (audit, repair record) lives with the namespace's shared
keys, a redriven letter goes to its event stream. Each is then two single-slot steps, in
the order that a crash between them cannot make lie by omission: the audit entry of a purge
is written before the letters are deleted; the repair record before the state is replaced;
a redrive notes what it published in the target stream's slot, in the same script as the
XADD, so that a redrive retried after a crash publishes nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from runtime.adapters.redis.client import RedisClient, is_cluster
from runtime.adapters.redis.cluster.keys import ClusterKeyspace
from runtime.adapters.redis.errors import WatchError
from runtime.core.keys import Keyspace

# Puts one dead letter back on its stream unless that was done before: atomic, so two
# concurrent redrives of one letter publish it once.
_REDRIVE_LUA = """
local done = redis.call('HGET', KEYS[1], ARGV[1])
if done then return {0, done} end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'envelope', ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], id)
return {1, id}
"""


# The same on a cluster, in the target stream's slot: the note is kept in a hash beside the
# stream (its key carries the stream's hash tag), named by domain and dead-letter id.
_REDRIVE_BESIDE_STREAM_LUA = """
local done = redis.call('HGET', KEYS[1], ARGV[1])
if done then return {0, done} end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'envelope', ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], id)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {1, id}
"""
# How long the cluster's per-stream redrive notes outlive the last redrive to that stream:
# the domain's own hash (``redriven_key``) is what lists show; these only guard retries.
REDRIVE_NOTE_TTL_S = 30 * 24 * 3600


def redrive_notes_key(stream: str) -> str:
    """The cluster's notes of letters redriven onto ``stream``, in the stream's slot (a key
    that begins with the stream's key has its hash tag)."""
    return f"{stream}:redrives"


class DeadLetterRedrive:
    """Redrives one dead letter at a time, each at most once (the scripts above)."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._cluster = is_cluster(redis)
        self._script = redis.register_script(
            _REDRIVE_BESIDE_STREAM_LUA if self._cluster else _REDRIVE_LUA
        )

    async def __call__(
        self, redriven_key: str, stream: str, entry_id: str, payload: bytes, maxlen: int
    ) -> bool:
        """Append ``payload`` to ``stream`` and note it under ``entry_id`` in ``redriven_key``;
        False (and nothing written) when that letter was redriven before."""
        if not self._cluster:
            done, _new_id = await self._script(
                keys=[redriven_key, stream], args=[entry_id, payload, maxlen]
            )
            return bool(int(done))
        # Two slots: the domain's hash says "done" for certain; the stream's notes decide
        # atomically with the XADD, and are copied to the hash after (again on a retry).
        if await self._redis.hget(redriven_key, entry_id) is not None:
            return False
        done, new_id = await self._script(
            keys=[redrive_notes_key(stream), stream],
            args=[f"{redriven_key} {entry_id}", payload, maxlen, REDRIVE_NOTE_TTL_S],
        )
        await self._redis.hset(redriven_key, entry_id, new_id)
        return bool(int(done))


async def purge_dead_letters(
    redis: RedisClient,
    dlq_key: str,
    redriven_key: str,
    entry_ids: Sequence[str],
    audit_key: str,
    audit: Mapping[str, str],
    audit_maxlen: int,
) -> None:
    """Delete the letters and their redrive notes, and append the audit entry, in one
    MULTI/EXEC (the audit entry also when no letter is named). On a cluster the audit entry
    is appended first, then the letters are deleted in one MULTI/EXEC of their slot."""
    fields: dict[Any, Any] = dict(audit)
    if is_cluster(redis):
        await redis.xadd(audit_key, fields, maxlen=audit_maxlen, approximate=True)
        if entry_ids:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.xdel(dlq_key, *entry_ids)
                pipe.hdel(redriven_key, *entry_ids)
                await pipe.execute()
        return
    async with redis.pipeline(transaction=True) as pipe:
        if entry_ids:
            pipe.xdel(dlq_key, *entry_ids)
            pipe.hdel(redriven_key, *entry_ids)
        pipe.xadd(audit_key, fields, maxlen=audit_maxlen, approximate=True)
        await pipe.execute()


def state_epoch_key(
    keyspace: Keyspace, domain: str, partition: int = 0, partitions: int = 1
) -> str:
    """The epoch counter a runner of this domain partition WATCHes: the domain's on a single
    Redis (``RedisCommitter``), the partition group's on a cluster (``ClusterCommitter``:
    in its state's slot; the same key for an unsplit domain)."""
    if isinstance(keyspace, ClusterKeyspace):
        return keyspace.state_epoch(keyspace.group(domain, partition, partitions))
    return keyspace.state_epoch(domain)


async def store_repaired_state(
    redis: RedisClient,
    *,
    state_key: str,
    state: bytes,
    epoch_key: str,
    repairs_key: str,
    record: Callable[[int], bytes],
    records_kept: int,
) -> int:
    """The state, an INCR of its epoch and the repair record (``record(new_epoch)``) in one
    MULTI/EXEC; returns the new epoch.

    The epoch is WATCHed so the record can name the value the INCR yields. On a cluster
    (the state and its epoch share a slot, the record is the namespace's) the record is
    appended first, then the state and the epoch are written in one MULTI/EXEC of their
    slot; a repair that comes between makes this one try again, with a new record.
    """
    if is_cluster(redis):
        return await _store_repaired_state_on_cluster(
            redis, state_key, state, epoch_key, repairs_key, record, records_kept
        )
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(epoch_key)
                epoch = int(await pipe.get(epoch_key) or 0) + 1
                entry = record(epoch)
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.set(state_key, state)
                pipe.incr(epoch_key)
                pipe.xadd(repairs_key, {"record": entry}, maxlen=records_kept, approximate=True)
                await pipe.execute()
                return epoch
            except WatchError:  # another repair of this domain came between: again
                continue


async def _store_repaired_state_on_cluster(
    redis: RedisClient,
    state_key: str,
    state: bytes,
    epoch_key: str,
    repairs_key: str,
    record: Callable[[int], bytes],
    records_kept: int,
) -> int:
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(epoch_key)
                epoch = int(await pipe.get(epoch_key) or 0) + 1
                await redis.xadd(
                    repairs_key, {"record": record(epoch)}, maxlen=records_kept, approximate=True
                )
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.set(state_key, state)
                pipe.incr(epoch_key)
                await pipe.execute()
                return epoch
            except WatchError:  # another repair of this domain came between: again
                continue


async def delete_matching(redis: RedisClient, pattern: str, chunk: int = 500) -> int:
    """Delete every key matching ``pattern`` (SCAN, then UNLINK ``chunk`` at a time); the
    number of keys deleted. A cluster client SCANs every master and splits each UNLINK by
    slot."""
    deleted = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= chunk:
            deleted += await redis.unlink(*batch)
            batch.clear()
    if batch:
        deleted += await redis.unlink(*batch)
    return deleted
