"""The PolicyStore: the risk policy in Redis, served from an in-process cache.

Reads (``get_policy``) return the cached frozen ``Policy``: no I/O, tens of nanoseconds.
Writes are compare-and-set on the version and go to Redis in one Lua script together with
the history record and the policy.updated event (scripts.py), then land in the cache.

The cache follows the policy.updated stream with plain XREAD (every process sees every
change; no consumer group) and checks the stored version every ``staleness_s`` seconds, so
a change is seen within that bound even if an event is missed. When Redis is lost, reads go
on serving the last known policy, ``health()`` says DEGRADED and writes raise
``PolicyUnavailable``; when it returns, the newest version wins: a newer one in Redis is
taken, a Redis that lost its data gets the last known policy (cache or snapshot) back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, cast

import redis.asyncio as aioredis
from quantum.control.v1 import policy_service_pb2
from quantum.events.v1 import policy_pb2
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runtime.adapters.redis.policy_scripts import WRITE_POLICY
from runtime.core.envelope import EnvelopeError, decode_envelope, open_payload, seal
from runtime.core.keys import Keyspace
from runtime.core.logs import get_logger
from runtime.core.metrics import MetricsRegistry
from runtime.core.policy.changes import apply_changes, changed_fields
from runtime.core.policy.codec import datetime_to_proto, policy_from_proto, policy_to_proto
from runtime.core.policy.defaults import default_policy
from runtime.core.policy.errors import (
    FieldViolation,
    PolicyUnavailable,
    PolicyValidationError,
    SnapshotCorrupted,
    VersionConflict,
)
from runtime.core.policy.history import PolicyChangeRecord, record_from_proto
from runtime.core.policy.metrics import policy_metrics
from runtime.core.policy.model import Policy, RiskMode, TradingState
from runtime.core.policy.snapshot import SnapshotFile
from runtime.core.policy.status import PolicyHealth, PolicyStoreStatus
from runtime.core.registry import EventRegistry, default_registry
from runtime.core.trace_index import DEFAULT_TRACE_TTL_S

EVENT_TYPE: Final = "policy.updated"
PRODUCER: Final = "policy_store"
DEFAULT_STREAM_MAXLEN: Final = 10_000
MAX_HISTORY_PAGE: Final = 1000
_MAX_WRITE_ATTEMPTS: Final = 50
_SUBSCRIBER_BUFFER: Final = 256
_SNAPSHOT_MIN_SPACING_S: Final = 0.1
_BACKOFF_MIN_S: Final = 0.05
_BACKOFF_MAX_S: Final = 2.0

# Redis (or, on a cluster, the master of the policy's slot) cannot serve now: ClusterError
# covers ClusterDownError and MasterDownError, redis-py's "TTL exhausted" after redirects.
_REDIS_DOWN = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterError,
    SlotNotCoveredError,
    TryAgainError,
)

_log = get_logger("runtime.core.policy")


@dataclasses.dataclass(frozen=True, slots=True)
class _Stored:
    """What Redis holds: the policy and the stream entry of the event that wrote it."""

    policy: Policy
    event_id: str


class _Backoff:
    """Exponential backoff with full jitter, reset on success."""

    def __init__(self) -> None:
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(_BACKOFF_MAX_S, _BACKOFF_MIN_S * 2**self._attempt)
        self._attempt = min(self._attempt + 1, 16)
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _connection_kwargs(redis: aioredis.Redis) -> Mapping[str, Any]:
    """How the client connects: of its pool, or (a cluster client has a pool per node) of
    the cluster client itself."""
    pool = getattr(redis, "connection_pool", None)
    if pool is not None:
        return cast(Mapping[str, Any], pool.connection_kwargs)
    return cast(RedisCluster, redis).get_connection_kwargs()


def _require_audit(changed_by: str, reason: str) -> None:
    problems = []
    if not changed_by or not changed_by.strip():
        problems.append(
            FieldViolation("changed_by", "must name who makes the change, e.g. operator:alice")
        )
    if not reason or not reason.strip():
        problems.append(FieldViolation("reason", "must say why the change is made"))
    if problems:
        raise PolicyValidationError(problems)


def _same_change(stored: Policy, new: Policy) -> bool:
    """True when ``stored`` is ``new`` apart from its time: the same change, already written."""
    return stored.version == new.version and dataclasses.replace(
        stored, updated_at=None
    ) == dataclasses.replace(new, updated_at=None)


class PolicyStore:
    """The versioned risk policy; see the module docstring for the guarantees.

    ``redis`` must return bytes (``decode_responses=False``). Call ``start()`` before use and
    ``stop()`` at the end; both are idempotent.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keyspace: Keyspace,
        *,
        state_dir: Path,
        staleness_s: float = 1.0,
        snapshot_interval_s: float = 300.0,
        registry: EventRegistry | None = None,
        stream_maxlen: int = DEFAULT_STREAM_MAXLEN,
        trace_ttl_s: int = DEFAULT_TRACE_TTL_S,
        metrics: MetricsRegistry | None = None,
    ) -> None:
        connection = _connection_kwargs(redis)
        if connection.get("decode_responses"):
            raise ValueError(
                "PolicyStore needs a Redis client with decode_responses=False: it stores bytes"
            )
        if staleness_s <= 0 or snapshot_interval_s <= 0:
            raise ValueError("staleness_s and snapshot_interval_s must be greater than 0")
        self._redis = redis
        self._keyspace = keyspace
        self._policy_key = keyspace.policy()
        self._history_key = keyspace.policy_history()
        self._stream_key = keyspace.stream(EVENT_TYPE)
        self._staleness_s = staleness_s
        self._snapshot_interval_s = snapshot_interval_s
        self._registry = registry or default_registry()
        self._stream_maxlen = stream_maxlen
        self._trace_ttl_s = trace_ttl_s
        self._snapshot = SnapshotFile(state_dir, keyspace.namespace)
        self._metrics = policy_metrics(metrics)
        self._script = redis.register_script(WRITE_POLICY)
        socket_timeout = connection.get("socket_timeout")
        # Short blocking reads: they bound how long stop() waits for the follower.
        block_s = min(0.25, socket_timeout / 2) if socket_timeout else 0.25
        self._block_ms = max(10, int(block_s * 1000))

        self._policy: Policy | None = None
        self._last_proto: tuple[Policy | None, policy_pb2.Policy] = (None, policy_pb2.Policy())
        self._event_id = ""  # stream entry that produced the cached policy
        self._follow_from = "$"
        self._health = PolicyHealth.DEGRADED
        self._last_error = "not started"
        self._last_sync = 0.0
        self._snapshot_problem = ""
        self._snapshot_due = asyncio.Event()
        self._stopped = asyncio.Event()
        self._subscribers: set[asyncio.Queue[Policy | None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._resync_lock = asyncio.Lock()
        self._started = False
        self._stopping = False

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load the policy: from Redis; into an empty Redis from the snapshot or the defaults.

        Redis unreachable: start DEGRADED on the snapshot, or raise ``PolicyUnavailable``
        when there is none. Empty Redis and a corrupted snapshot: raise
        ``SnapshotCorrupted`` (the defaults might loosen a tightened policy).
        """
        if self._started:
            return
        self._stopping = False
        self._stopped.clear()
        snapshot, problem = self._read_snapshot()
        try:
            stored = await self._read_stored()
        except _REDIS_DOWN as exc:
            if snapshot is None:
                raise PolicyUnavailable(
                    f"cannot start the PolicyStore: Redis is unreachable ({exc}) and there is "
                    f"no usable snapshot at {self._snapshot.path}; start Redis and retry"
                ) from exc
            self._install(snapshot, "", source="snapshot")
            self._mark_lost(exc)
            _log.warning(
                "policy_store_started_degraded",
                version=snapshot.version,
                snapshot=str(self._snapshot.path),
                error=str(exc),
            )
        else:
            if stored is None and problem is not None:
                raise problem
            if problem is not None:
                self._quarantine(problem)
            await self._settle(stored, snapshot, at_start=True)
            self._follow_from = self._event_id or "$"
            self._mark_synced()
        self._started = True
        self._snapshot_due.set()
        self._tasks = [
            asyncio.create_task(self._follow_events(), name="policy-store-follow"),
            asyncio.create_task(self._check_version(), name="policy-store-version-check"),
            asyncio.create_task(self._write_snapshots(), name="policy-store-snapshots"),
        ]
        _log.info("policy_store_started", version=self.get_policy().version)

    async def stop(self) -> None:
        """Stop following Redis, write a last snapshot, end every subscription."""
        if not self._started:
            return
        self._started = False
        self._stopping = True
        self._stopped.set()
        self._snapshot_due.set()
        # Every loop also checks the flag: a cancellation that lands in the middle of a
        # command can be swallowed, and then the loop ends when its short blocking read does.
        for task in self._tasks:
            task.cancel()
        _done, late = await asyncio.wait(self._tasks, timeout=self._block_ms / 1000 + 2.0)
        for task in late:
            task.cancel()
        self._tasks = []
        if self._policy is not None:
            try:
                await asyncio.to_thread(self._snapshot.write, self._policy)
            except OSError as exc:
                _log.error(
                    "policy_snapshot_write_failed", path=str(self._snapshot.path), error=str(exc)
                )
        for queue in list(self._subscribers):
            self._offer(queue, None)

    # ----------------------------------------------------------------- reads

    def get_policy(self) -> Policy:
        """The current policy (immutable, with its version), from memory."""
        policy = self._policy
        if policy is None:
            raise RuntimeError("PolicyStore.get_policy() called before start()")
        return policy

    def health(self) -> PolicyHealth:
        """HEALTHY when in step with Redis, DEGRADED when serving the cached policy only."""
        return self._health

    def status(self) -> PolicyStoreStatus:
        """Health, version, sync age and the reason for a DEGRADED state."""
        return PolicyStoreStatus(
            health=self._health,
            version=self._policy.version if self._policy else 0,
            seconds_since_sync=time.monotonic() - self._last_sync if self._last_sync else -1.0,
            last_error=self._last_error if self._health is PolicyHealth.DEGRADED else "",
            snapshot_path=self._snapshot.path,
            snapshot_problem=self._snapshot_problem,
        )

    @property
    def subscriber_count(self) -> int:
        """How many ``subscribe`` iterators are open."""
        return len(self._subscribers)

    async def subscribe(self, *, include_current: bool = True) -> AsyncIterator[Policy]:
        """Yield the current policy (unless told not to), then each newer one as it arrives.

        A subscriber that falls more than 256 versions behind skips the oldest; use
        ``history()`` to fill a gap. Ends when the store stops.
        """
        queue: asyncio.Queue[Policy | None] = asyncio.Queue(maxsize=_SUBSCRIBER_BUFFER)
        self._subscribers.add(queue)
        try:
            last = 0
            if include_current:
                current = self.get_policy()
                last = current.version
                yield current
            while True:
                policy = await queue.get()
                if policy is None:
                    return
                if policy.version > last or not include_current:
                    last = policy.version
                    yield policy
        finally:
            self._subscribers.discard(queue)

    async def history(
        self, page_size: int = 50, before_version: int | None = None
    ) -> list[PolicyChangeRecord]:
        """Change records, newest first: at most ``page_size``, below ``before_version``.

        Page on by passing the last record's version as ``before_version``.
        """
        if not 1 <= page_size <= MAX_HISTORY_PAGE:
            raise PolicyValidationError(
                [FieldViolation("page_size", f"must be between 1 and {MAX_HISTORY_PAGE}")]
            )
        upper: str | int = "+inf" if before_version is None else f"({before_version}"
        try:
            try:
                raw = await self._redis.zrevrangebyscore(
                    self._history_key, upper, "-inf", start=0, num=page_size
                )
            except _REDIS_DOWN:  # once more, on a fresh connection (see update)
                raw = await self._redis.zrevrangebyscore(
                    self._history_key, upper, "-inf", start=0, num=page_size
                )
        except _REDIS_DOWN as exc:
            self._mark_lost(exc)
            raise PolicyUnavailable(
                f"cannot read the policy history: Redis is unreachable ({exc})"
            ) from exc
        records = []
        for item in cast("list[bytes]", raw):
            message = policy_service_pb2.PolicyChange()
            message.ParseFromString(item)
            records.append(record_from_proto(message))
        return records

    # ----------------------------------------------------------------- writes

    async def switch_mode(
        self,
        mode: RiskMode,
        *,
        expected_version: int | None = None,
        changed_by: str,
        reason: str,
    ) -> Policy:
        """Make ``mode`` the active risk mode."""
        return await self.update(
            {"mode": mode}, expected_version=expected_version, changed_by=changed_by, reason=reason
        )

    async def set_trading_state(
        self,
        state: TradingState,
        *,
        expected_version: int | None = None,
        changed_by: str,
        reason: str,
    ) -> Policy:
        """Set the trading state (ACTIVE, REDUCING, HALTED)."""
        return await self.update(
            {"trading_state": state},
            expected_version=expected_version,
            changed_by=changed_by,
            reason=reason,
        )

    async def update(
        self,
        changes: Mapping[str, object],
        *,
        expected_version: int | None = None,
        changed_by: str,
        reason: str,
    ) -> Policy:
        """Apply field-mask changes (``{"normal.max_leverage": Decimal("3")}``) atomically.

        With ``expected_version`` the write happens only if that is still the current
        version (else ``VersionConflict``); without it, on whatever is current. A change
        that alters nothing writes nothing and returns the current policy.
        """
        started = time.perf_counter()
        outcome = "invalid"
        try:
            _require_audit(changed_by, reason)
            try:
                policy, outcome = await self._update(changes, expected_version, changed_by, reason)
            except _REDIS_DOWN:
                # Once more on a fresh connection: after a Redis restart the pool still holds
                # dead ones. Safe: a CAS that already applied is recognised as our own write.
                try:
                    policy, outcome = await self._update(
                        changes, expected_version, changed_by, reason
                    )
                except _REDIS_DOWN as exc:
                    outcome = "unavailable"
                    self._mark_lost(exc)
                    raise PolicyUnavailable(
                        f"policy not changed: Redis is unreachable ({exc}); reads serve version "
                        f"{self.get_policy().version} until it returns"
                    ) from exc
        except VersionConflict:
            outcome = "conflict"
            raise
        except PolicyUnavailable:
            outcome = "unavailable"
            raise
        finally:
            self._metrics.writes.inc(outcome)
            if outcome == "written":
                self._metrics.write_latency.observe(value=time.perf_counter() - started)
        return policy

    async def _update(
        self,
        changes: Mapping[str, object],
        expected_version: int | None,
        changed_by: str,
        reason: str,
    ) -> tuple[Policy, str]:
        """The new policy and the outcome: ``written`` or ``unchanged``."""
        base = self.get_policy()
        if expected_version is not None and expected_version != base.version:
            base = (await self._read_current()).policy
        for _attempt in range(_MAX_WRITE_ATTEMPTS):
            if expected_version is not None and base.version != expected_version:
                raise VersionConflict(expected_version, base.version)
            candidate = apply_changes(base, changes)
            fields = changed_fields(base, candidate)
            if not fields:
                current = (await self._read_current()).policy
                if current.version == base.version:
                    return current, "unchanged"
                base = current
                continue
            new = dataclasses.replace(
                candidate,
                version=base.version + 1,
                updated_at=datetime.now(UTC),
                updated_by=changed_by,
                reason=reason,
            )
            stored = await self._commit(
                new, base, fields, changed_by=changed_by, reason=reason, rule="cas"
            )
            if stored is None:
                return new, "written"
            if _same_change(stored.policy, new):
                return stored.policy, "written"  # our first attempt landed; its reply was lost
            base = stored.policy
            if expected_version is None:
                # Lost a race: a short random pause so one busy writer cannot starve another.
                await asyncio.sleep(random.uniform(0, min(0.02, 0.0005 * 2**_attempt)))
        raise PolicyUnavailable(
            f"the policy changed {_MAX_WRITE_ATTEMPTS} times while this write was retried; "
            "try again"
        )

    # ----------------------------------------------------------------- Redis I/O

    async def _commit(
        self,
        new: Policy,
        old: Policy | None,
        fields: tuple[str, ...],
        *,
        changed_by: str,
        reason: str,
        rule: str,
    ) -> _Stored | None:
        """Run the write script; None when written, else what Redis holds instead."""
        changed_at = datetime_to_proto(new.updated_at or datetime.now(UTC))
        new_proto = self._proto_of(new)
        previous_version = old.version if old is not None else 0
        event = policy_pb2.PolicyUpdated(
            policy=new_proto,
            previous_version=previous_version,
            changed_fields=list(fields),
            changed_by=changed_by,
            reason=reason,
            changed_at=changed_at,
        )
        envelope = seal(event, producer=PRODUCER, registry=self._registry)
        record = policy_service_pb2.PolicyChange(
            version=new.version,
            previous_version=previous_version,
            changed_at=changed_at,
            changed_by=changed_by,
            reason=reason,
            changed_fields=list(fields),
            new_policy=new_proto,
        )
        if old is not None:
            record.old_policy.CopyFrom(self._proto_of(old))
        policy_bytes = new_proto.SerializeToString(deterministic=True)
        reply: list[Any] = await self._script(
            keys=[
                self._policy_key,
                self._history_key,
                self._stream_key,
                self._keyspace.trace(envelope.trace_id),
            ],
            args=[
                old.version if old is not None else 0,
                new.version,
                policy_bytes,
                record.SerializeToString(deterministic=True),
                envelope.SerializeToString(deterministic=True),
                self._stream_maxlen,
                self._trace_ttl_s,
                rule,
            ],
        )
        if int(reply[0]) == 1:
            self._install(new, _text(reply[1]), source="write")
            self._mark_synced()
            return None
        stored_version, stored_bytes, stored_event = int(reply[1]), reply[2], _text(reply[3])
        if rule == "cas" and (
            stored_version == 0
            or not stored_bytes
            or (old is not None and stored_version < old.version)
        ):
            # Redis lost the policy (or went back to an older one) under us: put the newest
            # known one back, then go on from there.
            return await self._read_current()
        if stored_bytes == policy_bytes:
            # Our own write, applied by a retried command whose first reply was lost.
            self._install(new, stored_event, source="write")
            return None
        stored = _Stored(self._decode_policy(stored_bytes), stored_event)
        self._install(stored.policy, stored.event_id, source="redis")
        return stored

    async def _read_stored(self) -> _Stored | None:
        """What Redis holds now, None when it holds no policy."""
        version, raw, event_id = await self._redis.hmget(
            self._policy_key, ["version", "policy", "event_id"]
        )
        if version is None or not isinstance(raw, bytes):
            return None
        return _Stored(self._decode_policy(raw), _text(event_id))

    async def _read_current(self) -> _Stored:
        """What Redis holds, after giving a Redis that lost it the newest known policy."""
        stored = await self._read_stored()
        known = self._policy
        if stored is None or (known is not None and stored.policy.version < known.version):
            await self._settle(stored, self._best_known(), at_start=False)
            stored = await self._read_stored()
            if stored is None:
                raise PolicyUnavailable("Redis holds no policy and could not be given one")
        self._install(stored.policy, stored.event_id, source="redis")
        return stored

    async def _settle(
        self, stored: _Stored | None, known: Policy | None, *, at_start: bool
    ) -> None:
        """Make Redis and the cache agree; the newest version wins.

        ``known`` is the best policy we have besides Redis (snapshot or cache). Redis empty
        or older: write ``known`` back (or the defaults when there is nothing).
        """
        async with self._resync_lock:
            if stored is not None and (known is None or stored.policy.version >= known.version):
                self._install(stored.policy, stored.event_id, source="redis")
                return
            if known is None:
                initial = default_policy()
                why = "initial policy: the documented defaults"
                _log.info("policy_initialised_with_defaults", version=initial.version)
            else:
                initial = known
                source = "snapshot" if at_start else "last known policy"
                why = f"restored from the {source} after Redis lost the policy"
                if stored is not None:
                    why = (
                        f"restored version {known.version} from the {source}: Redis held an "
                        f"older version {stored.policy.version}"
                    )
                _log.warning(
                    "policy_restored_from_snapshot" if at_start else "policy_restored_into_redis",
                    version=known.version,
                    redis_version=stored.policy.version if stored else None,
                    snapshot=str(self._snapshot.path),
                )
            winner = await self._commit(
                initial,
                None,
                changed_fields(None, initial),
                changed_by=PRODUCER,
                reason=why,
                rule="newer",
            )
            if winner is not None:  # someone else got there first with a newer version
                self._install(winner.policy, winner.event_id, source="redis")

    def _proto_of(self, policy: Policy) -> policy_pb2.Policy:
        """The proto of ``policy``, remembered for the latest one (the next write's "old")."""
        cached_policy, cached_proto = self._last_proto
        if cached_policy is not policy:
            cached_proto = policy_to_proto(policy)
            self._last_proto = (policy, cached_proto)
        return cached_proto

    def _decode_policy(self, raw: bytes) -> Policy:
        message = policy_pb2.Policy()
        message.ParseFromString(raw)
        return policy_from_proto(message, validate=False)

    # ----------------------------------------------------------------- cache

    def _install(self, policy: Policy, event_id: str, *, source: str) -> None:
        """Take ``policy`` into the cache when it is newer (or Redis's word at equal version)."""
        current = self._policy
        if current is not None:
            if policy.version < current.version:
                return
            if policy.version == current.version:
                if event_id:
                    self._event_id = event_id  # the latest write of this version
                if policy == current or source != "redis":
                    return
        self._policy = policy
        if event_id:
            self._event_id = event_id
            if self._follow_from == "$":  # started without Redis: follow on from here
                self._follow_from = event_id
        self._metrics.cache_updates.inc(source)
        if current is not None:
            _log.info(
                "policy_changed",
                version=policy.version,
                previous_version=current.version,
                mode=policy.mode.value,
                trading_state=policy.trading_state.value,
                changed_by=policy.updated_by,
                source=source,
            )
        self._snapshot_due.set()
        for queue in list(self._subscribers):
            self._offer(queue, policy)

    @staticmethod
    def _offer(queue: asyncio.Queue[Policy | None], item: Policy | None) -> None:
        while True:
            try:
                queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                queue.get_nowait()  # drop the oldest: a slow watcher still gets the newest

    def _best_known(self) -> Policy | None:
        """The newer of the cache and a readable snapshot."""
        best = self._policy
        try:
            snapshot = self._snapshot.load()
        except SnapshotCorrupted:
            snapshot = None
        if snapshot is not None and (best is None or snapshot.version > best.version):
            best = snapshot
        return best

    def _mark_lost(self, exc: BaseException, problem: str = "Redis unreachable") -> None:
        self._last_error = f"{problem}: {exc}"
        if self._health is PolicyHealth.HEALTHY:
            self._health = PolicyHealth.DEGRADED
            _log.warning(
                "policy_store_degraded",
                error=str(exc),
                serving_version=self._policy.version if self._policy else None,
            )

    def _mark_synced(self) -> None:
        self._last_sync = time.monotonic()
        if self._health is PolicyHealth.DEGRADED:
            self._health = PolicyHealth.HEALTHY
            self._last_error = ""
            if self._started:
                _log.info("policy_store_recovered", version=self.get_policy().version)

    # ----------------------------------------------------------------- background tasks

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the store stops."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopped.wait()

    async def _follow_events(self) -> None:
        """Apply each policy.updated event as it is appended (plain XREAD, no group)."""
        backoff = _Backoff()
        while not self._stopping:
            try:
                reply = await self._redis.xread(
                    {self._stream_key: self._follow_from}, count=100, block=self._block_ms
                )
                backoff.reset()
                # RESP2 replies [[stream, entries]]; RESP3 replies {stream: [entries]}.
                streams = reply.items() if isinstance(reply, dict) else (reply or ())
                for _stream, entries in cast("Iterable[tuple[Any, Any]]", streams):
                    for entry_id, fields in cast(
                        "Iterable[tuple[bytes, dict[bytes, bytes]]]", entries
                    ):
                        self._follow_from = _text(entry_id)
                        if self._follow_from != self._event_id:  # not our own write
                            self._apply_event(self._follow_from, fields)
            except _REDIS_DOWN as exc:
                self._mark_lost(exc)
                await self._pause(backoff.next_delay())
            except Exception as exc:  # an error reply (LOADING, READONLY...): keep following
                self._loop_failed("follow", exc)
                await self._pause(backoff.next_delay())

    def _apply_event(self, entry_id: str, fields: Mapping[bytes, bytes]) -> None:
        try:
            envelope = decode_envelope(fields[b"envelope"])
            event = open_payload(envelope, self._registry)
            if not isinstance(event, policy_pb2.PolicyUpdated):
                raise EnvelopeError(f"expected PolicyUpdated, got {envelope.event_type}")
            policy = policy_from_proto(event.policy, validate=False)
        except (KeyError, EnvelopeError, PolicyValidationError) as exc:
            # The periodic version check still brings the cache up to date.
            _log.error("policy_event_unreadable", entry_id=entry_id, error=str(exc))
            return
        self._install(policy, entry_id, source="event")

    async def _check_version(self) -> None:
        """Every ``staleness_s``: compare with Redis, resync, and recover after an outage."""
        backoff = _Backoff()
        while not self._stopping:
            try:
                version, event_id = await self._redis.hmget(
                    self._policy_key, ["version", "event_id"]
                )
                current = self.get_policy()
                if version is None:
                    await self._read_current()  # Redis lost it: restore, then take it
                elif int(version) != current.version or _text(event_id) != self._event_id:
                    stored = await self._read_stored()
                    await self._settle(stored, self.get_policy(), at_start=False)
                self._mark_synced()
                backoff.reset()
                delay = self._staleness_s
            except _REDIS_DOWN as exc:
                self._mark_lost(exc)
                delay = min(self._staleness_s, backoff.next_delay())
            except Exception as exc:  # an error reply, an unreadable policy: check again later
                self._loop_failed("version-check", exc)
                delay = min(self._staleness_s, backoff.next_delay())
            await self._pause(delay)

    def _loop_failed(self, loop: str, exc: Exception) -> None:
        """A background loop met an error other than an outage: say so, and go DEGRADED."""
        error = f"{type(exc).__name__}: {exc}"
        _log.error(
            "policy_store_loop_failed",
            loop=loop,
            error=error,
            hint="the cache may lag Redis; the loop retries with backoff",
        )
        self._mark_lost(exc, f"{loop} failed ({type(exc).__name__})")

    async def _write_snapshots(self) -> None:
        """Write the snapshot after each change and every ``snapshot_interval_s``."""
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._snapshot_interval_s):
                    await self._snapshot_due.wait()
            if self._stopping:
                return  # stop() writes the last snapshot itself
            self._snapshot_due.clear()
            policy = self.get_policy()
            try:
                await asyncio.to_thread(self._snapshot.write, policy)
            except OSError as exc:
                _log.error(
                    "policy_snapshot_write_failed", path=str(self._snapshot.path), error=str(exc)
                )
            # A burst of changes costs one more write, of the newest, not one per change.
            await self._pause(_SNAPSHOT_MIN_SPACING_S)

    # ----------------------------------------------------------------- snapshot file

    def _read_snapshot(self) -> tuple[Policy | None, SnapshotCorrupted | None]:
        try:
            return self._snapshot.load(), None
        except SnapshotCorrupted as exc:
            _log.error(
                "policy_snapshot_corrupted", path=str(exc.path), problem=exc.problem, error=str(exc)
            )
            return None, exc

    def _quarantine(self, problem: SnapshotCorrupted) -> None:
        moved = self._snapshot.quarantine()
        self._snapshot_problem = f"{problem}; moved to {moved}" if moved else str(problem)
        _log.error(
            "policy_snapshot_ignored",
            path=str(problem.path),
            problem=problem.problem,
            moved_to=str(moved) if moved else None,
            detail="Redis holds a good policy; the corrupted snapshot was not loaded",
        )


__all__ = ["PolicyStore"]
