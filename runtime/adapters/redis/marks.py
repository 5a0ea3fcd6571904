"""Processed marks on Redis, for one Redis and a cluster alike: an event id is marked in the
set of its bucket (``Keyspace.processed_bucket``: named by the id's first
``PROCESSED_BUCKET_CHARS`` characters), the mark being the rest of the id. A batch's ids are
grouped by bucket, so a lookup is one SMISMEMBER and a commit one SADD per bucket."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import hiredis

from runtime.adapters.redis.errors import ResponseError
from runtime.adapters.redis.resp import pack
from runtime.core.keys import PROCESSED_BUCKET_CHARS

BucketKey = Callable[[str], str]  # an event id -> the key of its bucket's set


def by_bucket(event_ids: Iterable[str]) -> dict[str, list[str]]:
    """The ids grouped by bucket, each group in the order given."""
    buckets: dict[str, list[str]] = {}
    cut = PROCESSED_BUCKET_CHARS
    for event_id in event_ids:
        ids = buckets.get(event_id[:cut])
        if ids is None:
            buckets[event_id[:cut]] = [event_id]
        else:
            ids.append(event_id)
    return buckets


def lookups(bucket_key: BucketKey, buckets: dict[str, list[str]]) -> list[tuple[Any, ...]]:
    """One SMISMEMBER per bucket (``by_bucket``), in its order."""
    cut = PROCESSED_BUCKET_CHARS
    return [("SMISMEMBER", bucket_key(ids[0]), *[i[cut:] for i in ids]) for ids in buckets.values()]


def found(buckets: dict[str, list[str]], replies: Sequence[Any]) -> set[str]:
    """The ids the ``lookups`` replies say are marked; ``ResponseError`` for a refused one."""
    marked: set[str] = set()
    for ids, flags in zip(buckets.values(), replies, strict=True):
        if isinstance(flags, hiredis.ReplyError):
            raise ResponseError(str(flags))
        marked.update(i for i, flag in zip(ids, flags, strict=True) if flag)
    return marked


def pack_marks(bucket_key: BucketKey, event_ids: Iterable[str], ttl_s: bytes) -> list[bytes]:
    """SADD the marks of ``event_ids`` and EXPIRE each bucket, packed (for a MULTI/EXEC)."""
    cut = PROCESSED_BUCKET_CHARS
    parts: list[bytes] = []
    for ids in by_bucket(event_ids).values():
        key = bucket_key(ids[0])
        parts.append(pack(b"SADD", key, *[i[cut:] for i in ids]))
        parts.append(pack(b"EXPIRE", key, ttl_s))
    return parts
