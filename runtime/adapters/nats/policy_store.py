"""The PolicyStore on a JetStream KV bucket (``<ns>_-policy``, key ``current``).

One KV value holds a whole version: the change record (``quantum.control.v1.PolicyChange``:
the new policy, the old one, who, why, when, which fields). So "the policy" and "its change
event" are one write and cannot disagree: the bucket's own change stream *is* the event
stream, and every process's cache follows it with a KV watch.

- reads come from memory (``get_policy``); a watch brings each new version, and a version
  check every ``staleness_s`` confirms the cache (and notices an outage: DEGRADED);
- writes are compare-and-set on the KV revision of the version they were computed from
  (``expected_version`` makes that the caller's version); a reply lost to an outage is
  recognised when the stored version is this very change;
- history is the key's KV history: the last ``HISTORY`` versions (JetStream KV keeps at most
  64 per key), newest first.

Not here (the Redis store has them): the JSON snapshot in the state directory and the
restore from it into an empty broker, the policy.updated envelope on the events stream (the
KV watch replaces it; no domain consumes that stream), and policy metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

from nats.js.api import StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from quantum.control.v1 import policy_service_pb2

from runtime.adapters.nats.connection import Connection
from runtime.adapters.nats.errors import is_transient
from runtime.core.logs import get_logger
from runtime.core.policy.changes import apply_changes, changed_fields
from runtime.core.policy.defaults import default_policy
from runtime.core.policy.errors import (
    FieldViolation,
    PolicyUnavailable,
    PolicyValidationError,
    VersionConflict,
)
from runtime.core.policy.history import (
    PolicyChangeRecord,
    record_from_proto,
    record_to_proto,
)
from runtime.core.policy.model import Policy, RiskMode, TradingState
from runtime.core.policy.status import PolicyHealth, PolicyStoreStatus

_log = get_logger("runtime.adapters.nats.policy")

KEY = "current"
HISTORY = 64
# The Redis store's ceiling, which the control plane pages by (WatchPolicy asks for this
# many); a page holds at most the HISTORY versions the bucket keeps.
MAX_HISTORY_PAGE = 1000
_MAX_WRITE_ATTEMPTS = 20
_SUBSCRIBER_BUFFER = 256


class JetStreamPolicyStore:
    """The versioned risk policy on JetStream KV; see the module doc."""

    def __init__(
        self, connection: Connection, *, initial: Policy | None = None, staleness_s: float = 1.0
    ) -> None:
        if staleness_s <= 0:
            raise ValueError("staleness_s must be greater than 0")
        self.connection = connection
        self._bucket_name = connection.names.policy_bucket
        self._initial = initial or default_policy()
        self._staleness_s = staleness_s
        self._kv: KeyValue | None = None
        self._policy: Policy | None = None
        self._health = PolicyHealth.DEGRADED
        self._last_error = "not started"
        self._last_sync = 0.0
        self._subscribers: set[asyncio.Queue[Policy | None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self._started = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the stored policy (storing the initial one in an empty bucket), then follow
        it. Raises ``PolicyUnavailable`` when NATS is unreachable at start."""
        if self._started:
            return
        try:
            record = await self._read()
            if record is None:
                record = await self._create_first()
        except Exception as exc:
            if not is_transient(exc):
                raise
            raise PolicyUnavailable(
                f"cannot start the policy store: NATS is unreachable ({exc}); start it and retry"
            ) from exc
        self._install(record.new_policy)
        self._mark_synced()
        self._started = True
        self._stopped.clear()
        self._tasks = [
            asyncio.create_task(self._follow(), name="policy-store-watch"),
            asyncio.create_task(self._check_version(), name="policy-store-version-check"),
        ]

    async def stop(self) -> None:
        """Stop following, end every subscription."""
        if not self._started:
            return
        self._started = False
        self._stopped.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for queue in list(self._subscribers):
            _offer(queue, None)

    # -- reads ------------------------------------------------------------------------------

    def get_policy(self) -> Policy:
        """The current policy (immutable, with its version), from memory."""
        policy = self._policy
        if policy is None:
            raise RuntimeError("JetStreamPolicyStore.get_policy() called before start()")
        return policy

    def health(self) -> PolicyHealth:
        return self._health

    def status(self) -> PolicyStoreStatus:
        return PolicyStoreStatus(
            health=self._health,
            version=self._policy.version if self._policy else 0,
            seconds_since_sync=time.monotonic() - self._last_sync if self._last_sync else -1.0,
            last_error=self._last_error if self._health is PolicyHealth.DEGRADED else "",
            snapshot_path=Path(),  # no snapshot on this engine (module doc)
            snapshot_problem="",
        )

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    async def subscribe(self, *, include_current: bool = True) -> AsyncIterator[Policy]:
        """Yield the current policy (unless told not to), then each newer one; ends when the
        store stops. A subscriber more than 256 versions behind skips the oldest."""
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
                if policy.version > last:
                    last = policy.version
                    yield policy
        finally:
            self._subscribers.discard(queue)

    async def history(
        self, page_size: int = 50, before_version: int | None = None
    ) -> list[PolicyChangeRecord]:
        """Change records, newest first: at most ``page_size``, below ``before_version``
        (of the last ``HISTORY`` versions the bucket keeps)."""
        if not 1 <= page_size <= MAX_HISTORY_PAGE:
            raise PolicyValidationError(
                [FieldViolation("page_size", f"must be between 1 and {MAX_HISTORY_PAGE}")]
            )
        try:
            kv = await self._bucket()
            entries = await kv.history(KEY)
        except KeyNotFoundError:
            return []
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._mark_lost(exc)
            raise PolicyUnavailable(
                f"cannot read the policy history: NATS is unreachable ({exc})"
            ) from exc
        records = [_decode(entry.value) for entry in entries if entry.value]
        records.sort(key=lambda r: r.version, reverse=True)
        if before_version is not None:
            records = [r for r in records if r.version < before_version]
        return records[:page_size]

    # -- writes -----------------------------------------------------------------------------

    async def switch_mode(
        self,
        mode: RiskMode,
        *,
        expected_version: int | None = None,
        changed_by: str,
        reason: str,
    ) -> Policy:
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
        """Apply field-mask changes as one compare-and-set; ``VersionConflict`` when
        ``expected_version`` is not the stored version, ``PolicyUnavailable`` when NATS is
        unreachable (nothing changed then: reads serve the cached version)."""
        _require_audit(changed_by, reason)
        try:
            return await self._update(changes, expected_version, changed_by, reason)
        except (VersionConflict, PolicyValidationError):
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._mark_lost(exc)
            raise PolicyUnavailable(
                f"policy not changed: NATS is unreachable ({exc}); reads serve version "
                f"{self.get_policy().version} until it returns"
            ) from exc

    async def _update(
        self,
        changes: Mapping[str, object],
        expected_version: int | None,
        changed_by: str,
        reason: str,
    ) -> Policy:
        kv = await self._bucket()
        for _ in range(_MAX_WRITE_ATTEMPTS):
            entry = await kv.get(KEY)
            stored = _decode(entry.value or b"")
            base = stored.new_policy
            if expected_version is not None and base.version != expected_version:
                self._install(base)
                raise VersionConflict(expected_version, base.version)
            candidate = apply_changes(base, changes)
            fields = changed_fields(base, candidate)
            if not fields:
                self._install(base)
                return base
            changed_at = datetime.now(UTC)
            new = dataclasses.replace(
                candidate,
                version=base.version + 1,
                updated_at=changed_at,
                updated_by=changed_by,
                reason=reason,
            )
            record = PolicyChangeRecord(
                version=new.version,
                previous_version=base.version,
                changed_at=changed_at,
                changed_by=changed_by,
                reason=reason,
                changed_fields=fields,
                old_policy=base,
                new_policy=new,
            )
            try:
                await kv.update(KEY, _encode(record), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue  # another writer got there first: compute again on its version
            except Exception as exc:
                if not is_transient(exc):
                    raise
                landed = await self._landed(record)
                if landed is None:
                    raise
                return landed
            self._install(new)
            self._mark_synced()
            return new
        raise PolicyUnavailable(
            f"the policy changed {_MAX_WRITE_ATTEMPTS} times while this write was retried; "
            "try again"
        )

    async def _landed(self, record: PolicyChangeRecord) -> Policy | None:
        """After a lost reply: the stored policy when it is this very change, else None."""
        with contextlib.suppress(Exception):
            stored = await self._read()
            if stored is not None and stored.new_policy == record.new_policy:
                self._install(stored.new_policy)
                return stored.new_policy
        return None

    # -- following --------------------------------------------------------------------------

    async def _follow(self) -> None:
        """Install each version the KV watch brings; start a new watch after an outage."""
        while self._started:
            try:
                kv = await self._bucket()
                watcher = await kv.watch(KEY, ignore_deletes=True)
                try:
                    while self._started:
                        try:
                            entry = await watcher.updates(timeout=self._staleness_s * 5)  # type: ignore[no-untyped-call]
                        except TimeoutError:
                            continue
                        if entry is not None and entry.value:
                            self._install(_decode(entry.value).new_policy)
                            self._mark_synced()
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._mark_lost(exc)
                await self._pause(self._staleness_s)

    async def _check_version(self) -> None:
        """Confirm the cache every ``staleness_s`` (a lost watch, an outage: DEGRADED)."""
        while self._started:
            await self._pause(self._staleness_s)
            try:
                record = await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._mark_lost(exc)
                continue
            if record is not None:
                self._install(record.new_policy)
                self._mark_synced()

    # -- the bucket -------------------------------------------------------------------------

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            js = await self.connection.jetstream()
            try:
                self._kv = await js.key_value(self._bucket_name)
            except BucketNotFoundError:
                self._kv = await js.create_key_value(
                    bucket=self._bucket_name, history=HISTORY, storage=StorageType.FILE
                )
        return self._kv

    async def _read(self) -> PolicyChangeRecord | None:
        kv = await self._bucket()
        try:
            entry = await kv.get(KEY)
        except KeyNotFoundError:
            return None
        return _decode(entry.value) if entry.value else None

    async def _create_first(self) -> PolicyChangeRecord:
        """Store the initial policy as version 1 (another process may do it first)."""
        kv = await self._bucket()
        initial = dataclasses.replace(
            self._initial,
            version=max(1, self._initial.version),
            updated_at=self._initial.updated_at or datetime.now(UTC),
        )
        record = PolicyChangeRecord(
            version=initial.version,
            previous_version=0,
            changed_at=initial.updated_at or datetime.now(UTC),
            changed_by=initial.updated_by or "system",
            reason=initial.reason or "initial policy",
            changed_fields=(),
            old_policy=None,
            new_policy=initial,
        )
        try:
            await kv.create(KEY, _encode(record))
        except KeyWrongLastSequenceError:
            stored = await self._read()
            if stored is None:
                raise PolicyUnavailable("the policy bucket refused the initial policy") from None
            return stored
        return record

    # -- cache ------------------------------------------------------------------------------

    def _install(self, policy: Policy) -> None:
        current = self._policy
        if current is not None and policy.version <= current.version:
            return
        self._policy = policy
        if current is not None:
            _log.info(
                "policy_changed",
                version=policy.version,
                previous_version=current.version,
                mode=policy.mode.value,
                trading_state=policy.trading_state.value,
                changed_by=policy.updated_by,
            )
        for queue in list(self._subscribers):
            _offer(queue, policy)

    def _mark_lost(self, exc: BaseException) -> None:
        self._last_error = f"NATS unreachable: {exc}"
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

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopped.wait()


def _offer(queue: asyncio.Queue[Policy | None], item: Policy | None) -> None:
    while True:
        try:
            queue.put_nowait(item)
            return
        except asyncio.QueueFull:
            queue.get_nowait()  # drop the oldest: a slow watcher still gets the newest


def _require_audit(changed_by: str, reason: str) -> None:
    problems = []
    if not changed_by.strip():
        problems.append(FieldViolation("changed_by", "must name who makes the change"))
    if not reason.strip():
        problems.append(FieldViolation("reason", "must say why the change is made"))
    if problems:
        raise PolicyValidationError(problems)


def _encode(record: PolicyChangeRecord) -> bytes:
    return record_to_proto(record).SerializeToString(deterministic=True)


def _decode(value: bytes) -> PolicyChangeRecord:
    message = policy_service_pb2.PolicyChange()
    message.ParseFromString(value)
    return record_from_proto(message)
