"""The runner's commit script: atomic writes that all run, the first error raised after."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from runtime.core.keys import Keyspace
from runtime.core.runner import COMMIT_SCRIPT


async def test_commit_script_runs_every_command(aredis: aioredis.Redis, keyspace: Keyspace) -> None:
    ns = keyspace.namespace
    script = aredis.register_script(COMMIT_SCRIPT)
    keys = [f"{ns}:marks", f"{ns}:marks", f"{ns}:state"]
    args = [2, "SADD", "a", "b", 1, "EXPIRE", 60, 1, "SET", b"\x00state"]
    assert await script(keys=keys, args=args) == 3
    assert await aredis.smembers(f"{ns}:marks") == {b"a", b"b"}
    assert 0 < await aredis.ttl(f"{ns}:marks") <= 60
    assert await aredis.get(f"{ns}:state") == b"\x00state"


async def test_commit_script_raises_the_first_error_after_the_rest(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    # Like MULTI/EXEC: a failing write (here a wrong type) does not keep the marks and the
    # state from being written, and the caller still sees the error.
    ns = keyspace.namespace
    await aredis.xadd(f"{ns}:stream", {"f": "v"})
    script = aredis.register_script(COMMIT_SCRIPT)
    keys = [f"{ns}:stream", f"{ns}:marks", f"{ns}:state"]
    args = [1, "SADD", "x", 1, "SADD", "a", 1, "SET", "s"]
    with pytest.raises(ResponseError, match=r"^WRONGTYPE"):
        await script(keys=keys, args=args)
    assert await aredis.smembers(f"{ns}:marks") == {b"a"}
    assert await aredis.get(f"{ns}:state") == b"s"
