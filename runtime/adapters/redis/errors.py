"""The one rule for Redis errors: which ones are worth sending the same request again.

It also names redis-py's exception classes for the code outside this package, which may
catch them but not import redis (import-linter): ``except RedisUnreachable`` instead of
``except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)``.
"""

from __future__ import annotations

import hiredis
from redis.exceptions import (
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterError,
    NoPermissionError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
    WatchError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = [
    "RETRYABLE_ERRORS",
    "TRANSIENT_REPLIES",
    "AccessDenied",
    "AuthenticationError",
    "BusyLoadingError",
    "CommitFailed",
    "NoPermissionError",
    "RedisConnectionError",
    "RedisError",
    "RedisTimeoutError",
    "RedisUnreachable",
    "ResponseError",
    "WatchError",
    "is_missing_group",
    "is_transient",
]

# The client could not reach Redis or got no answer in time (AuthenticationError is a
# ConnectionError too: test for it first where a refused user is not an outage).
RedisUnreachable: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)

# Redis refused the client's user or password, or the user lacks a permission.
AccessDenied: tuple[type[Exception], ...] = (AuthenticationError, NoPermissionError)

# Errors after which the same request can simply be sent again, once Redis answers.
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
    # Redis Cluster, as redis-py's cluster client raises them: a slot moved or migrating
    # (MOVED, ASK), the cluster down or its slot map stale; redis-py strips the reply's
    # prefix from these, so they are told apart by class, not by text.
    AskError,  # MovedError too
    TryAgainError,
    ClusterError,  # ClusterDownError, MasterDownError, "TTL exhausted"
    SlotNotCoveredError,
)

# Error replies that mean "not now" rather than "never": a script running too long, a
# dataset loading after a restart, a replica promoted or a cluster slot moving.
TRANSIENT_REPLIES = (
    "BUSY ",
    "LOADING",
    "TRYAGAIN",
    "MASTERDOWN",
    "READONLY",
    "CLUSTERDOWN",
    "MOVED ",
    "ASK ",
    # A blocked read whose stream went away under it (migrated to another cluster node, or
    # deleted): read again, and meet MOVED or NOGROUP, which say what to do.
    "UNBLOCKED",
)
# What redis-py's cluster client says when no node of the cluster answers (all of them
# restarting) or the nodes do not yet agree on who serves every slot.
_CLUSTER_UNREACHABLE = (
    "Redis Cluster cannot be connected",
    "All slots are not covered",
    "startup_nodes could not agree",
)


def is_transient(exc: BaseException) -> bool:
    """True for Redis errors after which the same request can be sent again later."""
    if isinstance(exc, RETRYABLE_ERRORS):
        return True
    if isinstance(exc, RedisClusterException):
        return str(exc).startswith(_CLUSTER_UNREACHABLE)
    return isinstance(exc, ResponseError | hiredis.ReplyError) and str(exc).startswith(
        TRANSIENT_REPLIES
    )


def is_missing_group(exc: BaseException) -> bool:
    """The consumer group (or its stream) was deleted under a running consumer."""
    return isinstance(exc, ResponseError | hiredis.ReplyError) and str(exc).startswith("NOGROUP")


class CommitFailed(ResponseError):
    """Redis refused a command inside a commit's MULTI/EXEC (a key of the wrong type, an
    out-of-memory reply): nothing of the commit was kept but what Redis ran before it."""
