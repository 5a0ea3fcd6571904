"""The writes an operator's requests make, and the cleanup of a run's namespace.

Each function is one Redis transaction (or script) the control plane or the composition
root asks for by what it does: store a repaired state, redrive or purge dead letters,
delete a namespace. The keys are the caller's (``runtime.core.keys``); the commands are
spelt here, the only package that speaks Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from runtime.adapters.redis.client import RedisClient
from runtime.adapters.redis.errors import WatchError

# Puts one dead letter back on its stream unless that was done before: atomic, so two
# concurrent redrives of one letter publish it once.
_REDRIVE_LUA = """
local done = redis.call('HGET', KEYS[1], ARGV[1])
if done then return {0, done} end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'envelope', ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], id)
return {1, id}
"""


class DeadLetterRedrive:
    """Redrives one dead letter at a time, each at most once (the script above)."""

    def __init__(self, redis: RedisClient) -> None:
        self._script = redis.register_script(_REDRIVE_LUA)

    async def __call__(
        self, redriven_key: str, stream: str, entry_id: str, payload: bytes, maxlen: int
    ) -> bool:
        """Append ``payload`` to ``stream`` and note it under ``entry_id`` in ``redriven_key``;
        False (and nothing written) when that letter was redriven before."""
        done, _new_id = await self._script(
            keys=[redriven_key, stream], args=[entry_id, payload, maxlen]
        )
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
    MULTI/EXEC (the audit entry also when no letter is named)."""
    fields: dict[Any, Any] = dict(audit)
    async with redis.pipeline(transaction=True) as pipe:
        if entry_ids:
            pipe.xdel(dlq_key, *entry_ids)
            pipe.hdel(redriven_key, *entry_ids)
        pipe.xadd(audit_key, fields, maxlen=audit_maxlen, approximate=True)
        await pipe.execute()


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

    The epoch is WATCHed so the record can name the value the INCR yields.
    """
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


async def delete_matching(redis: RedisClient, pattern: str, chunk: int = 500) -> int:
    """Delete every key matching ``pattern`` (SCAN, then UNLINK ``chunk`` at a time); the
    number of keys deleted."""
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
