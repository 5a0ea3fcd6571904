"""The domain runner: one actor, fed from its consumer groups, with the delivery guarantees.

Per batch: XREADGROUP many entries, decode them, skip those already processed, run the
actor's handlers one at a time (through ``actor.deliver``, the path replays use too), publish
their outputs durably, then acknowledge — in one atomic server-side script with the
processed-id marks and the actor's state snapshot, so that "acknowledged", "processed" and
"state" never disagree.

Why each step is where it is (DESIGN section 4):
- outputs are published before the acknowledgement: a crash in between redelivers the input,
  whose outputs come out again with the same ids (derived from the input), and downstream
  skips them by id; nothing is lost;
- the processed marks (one Redis set per ~17 minutes of event ids, with a TTL) make a
  duplicate entry of one event (a publisher's retry after a lost reply) a no-op;
- a failing handler is retried in place, with backoff, after committing the work before it;
  each retry is a new delivery (XCLAIM), so the attempt count lives in the pending list and
  survives restarts; past ``max_deliveries`` the entry goes to the dead-letter stream;
- entries that cannot be opened go to the dead-letter stream at once, with the reason;
- entries of a dead consumer are claimed after ``visibility_timeout_ms`` (XAUTOCLAIM), and
  those being handled are kept alive (XCLAIM JUSTID) so that a slow handler keeps its work;
- Redis errors are retried with capped backoff; a deleted group is recreated where this
  consumer last acknowledged.

Ordering: one runner handles its entries in stream order, and the entries of one read from
several streams merged by entry id (time order). Several runners of one domain keep
per-partition-key order through *partition groups*: with ``partitions=N`` each runner reads the
stream through its own group ``<domain>.p<i>of<N>`` and handles only the keys that hash to
``i`` (acknowledging the rest unhandled), so a key is always handled by one runner, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from google.protobuf.message import Message
from quantum.events.v1.envelope_pb2 import Envelope
from redis.exceptions import ResponseError

from runtime.core import otel, tracing  # otel: the import
from runtime.core.actor import Actor, deliver
from runtime.core.backoff import Backoff
from runtime.core.bus import (
    ENVELOPE_FIELD,
    RETRYABLE_ERRORS,
    EventBus,
    PublishBufferFull,
    is_transient,
)
from runtime.core.dead_letters import DeadLetter, Reason, now_ms, xadd_args
from runtime.core.envelope import EnvelopeError, decode_envelope, open_payload, trace_of
from runtime.core.failures import is_permanent, reason_of
from runtime.core.keys import Keyspace
from runtime.core.logs import get_logger
from runtime.core.metrics import RuntimeMetrics, runtime_metrics
from runtime.core.registry import EventRegistry, default_registry

T = TypeVar("T")

_log = get_logger("runtime.runner")

# Errors a background duty (heartbeat, keep-alive, stats) notes and outlives.
_BACKGROUND_ERRORS: tuple[type[Exception], ...] = (*RETRYABLE_ERRORS, ResponseError)

# A commit (dead letters, XACK, processed marks, state) as one server-side script: atomic like
# MULTI/EXEC, and like it every command runs even when one fails (the first error is raised
# afterwards), but one command to encode and one reply to parse instead of one per write.
# ARGV holds, per command: its argument count after the key, its name, those arguments;
# KEYS holds each command's key, in order.
COMMIT_SCRIPT = """
local pcall = redis.pcall
local failed = nil
local i = 1
for k = 1, #KEYS do
  local n = tonumber(ARGV[i])
  local reply = pcall(ARGV[i + 1], KEYS[k], unpack(ARGV, i + 2, i + 1 + n))
  if failed == nil and type(reply) == 'table' and reply.err then
    failed = reply
  end
  i = i + 2 + n
end
if failed then
  return failed
end
return #KEYS
"""

# Ids per XACK/SADD in a commit: well under Lua's limit on the arguments of one call.
_MAX_IDS_PER_COMMAND = 1_000

# Processed marks are grouped by the first 6 characters of the event id: 30 bits of
# milliseconds dropped, so one set holds about 17.5 minutes of events.
PROCESSED_BUCKET_CHARS = 6


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    """How one runner consumes. Only ``consumer_name`` has no sensible default."""

    consumer_name: str
    batch_size: int = 500
    block_ms: int = 1_000
    max_deliveries: int = 5
    visibility_timeout_ms: int = 30_000
    claim_interval_ms: int | None = None  # default: half the visibility timeout
    retry_base_ms: int = 100
    retry_cap_ms: int = 5_000
    reconnect_base_ms: int = 50
    reconnect_cap_ms: int = 2_000
    processed_ttl_s: int = 7 * 86_400
    heartbeat_interval_s: float = 1.0
    group_stats_interval_s: float = 5.0
    start_id: str = "0"  # where a new group starts: "0" = the whole stream, "$" = new only
    prefetch: bool = True  # read the next batch while handling this one
    recent_ids: int = 100_000  # handled ids remembered in memory (duplicates in flight)
    partition: int = 0
    partitions: int = 1

    def __post_init__(self) -> None:
        if not self.consumer_name:
            raise ValueError("RunnerConfig.consumer_name must name this consumer (e.g. host-pid)")
        if self.max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        if not 0 <= self.partition < self.partitions:
            raise ValueError(
                f"partition {self.partition} is outside 0..{self.partitions - 1} "
                f"(partitions={self.partitions})"
            )
        if self.batch_size < 1 or self.block_ms < 1 or self.visibility_timeout_ms < 1:
            raise ValueError("batch_size, block_ms and visibility_timeout_ms must be positive")


def group_name(keyspace: Keyspace, domain: str, partition: int = 0, partitions: int = 1) -> str:
    """The consumer group of a domain (of one of its partitions when it has several)."""
    base = keyspace.group(domain)
    return base if partitions == 1 else f"{base}.p{partition}of{partitions}"


def partition_of(partition_key: str, partitions: int) -> int:
    """Which partition owns a key: stable across processes and Python versions."""
    if partitions == 1:
        return 0
    return zlib.crc32(partition_key.encode()) % partitions


def state_key(keyspace: Keyspace, domain: str, partition: int = 0, partitions: int = 1) -> str:
    """Where the runner keeps the actor's state snapshot."""
    base = f"{keyspace.namespace}:state:{domain}"
    return base if partitions == 1 else f"{base}.p{partition}of{partitions}"


def processed_bucket(keyspace: Keyspace, domain: str, event_id: str) -> str:
    """The set that holds the processed mark of ``event_id``."""
    return f"{keyspace.processed(domain)}:{event_id[:PROCESSED_BUCKET_CHARS]}"


class _Entry:
    """One stream entry in the runner's hands."""

    __slots__ = ("bucket", "data", "deliveries", "entry_id", "envelope", "stream")

    def __init__(self, stream: str, entry_id: bytes, data: bytes | None, deliveries: int) -> None:
        self.stream = stream
        self.entry_id = entry_id
        self.data = data
        self.deliveries = deliveries
        self.envelope: Envelope | None = None
        self.bucket = ""  # the processed-marks set of its event id


class _Batch:
    """One read, prepared: what to handle, what is already processed, what to commit."""

    __slots__ = ("commit", "done", "entries", "ready")

    def __init__(self, entries: list[_Entry]) -> None:
        self.entries = entries
        self.ready: list[_Entry] = []
        self.done: set[str] = set()
        self.commit = _Commit()


class _Commit:
    """What one commit makes durable: outputs, then acks + processed marks + dead letters."""

    __slots__ = ("acks", "consumed", "dead", "outputs", "processed")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.acks: dict[str, list[bytes]] = {}
        self.processed: list[_Entry] = []
        self.outputs: list[Envelope] = []
        self.dead: list[DeadLetter] = []
        self.consumed: dict[str, int] = {}

    def ack(self, entry: _Entry) -> None:
        ids = self.acks.get(entry.stream)
        if ids is None:
            self.acks[entry.stream] = [entry.entry_id]
        else:
            ids.append(entry.entry_id)

    def __bool__(self) -> bool:
        return bool(self.acks or self.outputs or self.dead)


class DomainRunner:
    """Runs one actor on the streams of the event types it handles. See the module doc."""

    def __init__(
        self,
        actor: Actor,
        redis: aioredis.Redis,
        keyspace: Keyspace,
        bus: EventBus,
        config: RunnerConfig,
        *,
        registry: EventRegistry | None = None,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        if not actor.name:
            raise ValueError(f"{type(actor).__name__}.name is empty; every actor needs a name")
        self.actor = actor
        self.redis = redis
        self.keyspace = keyspace
        self.bus = bus
        self.config = config
        self.registry = registry or default_registry()
        self.metrics = metrics or runtime_metrics()
        self.domain = actor.name
        self.group = group_name(keyspace, actor.name, config.partition, config.partitions)
        self.streams: list[str] = sorted(
            {keyspace.stream(t.name) for t in type(actor).consumes(self.registry)}
        )
        if not self.streams:
            raise ValueError(f"{type(actor).__name__} has no @handles methods; nothing to consume")
        self._state_key = state_key(keyspace, actor.name, config.partition, config.partitions)
        self._heartbeat_key = keyspace.heartbeat(actor.name)
        self._retry = Backoff(config.retry_base_ms / 1000, config.retry_cap_ms / 1000)
        self._reconnect = Backoff(config.reconnect_base_ms / 1000, config.reconnect_cap_ms / 1000)
        self._claim_interval_s = (
            config.claim_interval_ms
            if config.claim_interval_ms is not None
            else config.visibility_timeout_ms / 2
        ) / 1000
        self._last_acked: dict[str, bytes] = {}
        self._held: list[_Batch] = []  # read and not yet committed: kept alive
        self._recent: OrderedDict[str, None] = OrderedDict()  # ids handled lately
        self._processed_prefix = keyspace.processed(actor.name) + ":"
        self._commit_script = redis.register_script(COMMIT_SCRIPT)
        self._stopping = False
        self._running = False
        self._done = asyncio.Event()
        self._done.set()
        self._abandoned = False  # a retry was cut short by stop(): leave the rest pending
        # otel: spans are chosen once, here; with export off these are the plain callables.
        self._deliver = otel.traced_deliver(deliver, self.domain) if otel.ENABLED else deliver
        self._publish = (  # otel:
            otel.traced_publish(self._publish_outputs, self.domain, from_handler=True)
            if otel.ENABLED
            else self._publish_outputs
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until ``stop()``; returns after the in-flight batch is acknowledged."""
        if self._running:
            raise RuntimeError(f"runner of {self.domain} is already running")
        self._running = True
        self._stopping = False
        self._done.clear()
        background: list[asyncio.Task[None]] = []
        try:
            await self._with_reconnect("start", self._ensure_groups)
            await self._with_reconnect("start", self._restore_state)
            await self.actor.on_start()
            background = [
                asyncio.create_task(self._heartbeat_loop(), name=f"{self.domain}-heartbeat"),
                asyncio.create_task(self._stats_loop(), name=f"{self.domain}-group-stats"),
                asyncio.create_task(self._keepalive_loop(), name=f"{self.domain}-keepalive"),
            ]
            _log.info(
                "runner_started",
                domain=self.domain,
                group=self.group,
                consumer=self.config.consumer_name,
                streams=self.streams,
            )
            await self._consume()
            await self.bus.flush()
            await self.actor.on_stop()
        finally:
            # The loops also watch this flag: redis-py can turn a cancel that lands mid-command
            # into a connection error, which a loop that tolerates outages would swallow.
            self._stopping = True
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._running = False
            self._done.set()
            _log.info("runner_stopped", domain=self.domain, consumer=self.config.consumer_name)

    async def stop(self) -> None:
        """Stop reading, finish and acknowledge the batch in hand, flush; wait for ``run``."""
        self._stopping = True
        await self._done.wait()

    @property
    def running(self) -> bool:
        return self._running

    # -- the consume loop -------------------------------------------------------------------

    async def _consume(self) -> None:
        failures = 0
        history = True  # first our own pending entries (a previous life of this consumer)
        next_claim = time.monotonic() + self._claim_interval_s
        # While a batch is handled, the next one is read (and checked against the processed
        # marks): the round trips overlap the handling instead of adding to it.
        prefetch: asyncio.Task[_Batch] | None = None
        try:
            while True:
                try:
                    if prefetch is not None:
                        task, prefetch = prefetch, None
                        batch = await task  # a read is never cancelled: it returns in block_ms
                    elif self._stopping:
                        break
                    elif history:
                        batch = await self._fetch(history=True)
                        if not batch.entries:
                            history = False
                            continue
                    elif time.monotonic() >= next_claim:
                        next_claim = time.monotonic() + self._claim_interval_s
                        batch = await self._prepare(await self._claim_idle())
                    else:
                        batch = await self._fetch(history=False)
                    if (
                        not history
                        and not self._stopping
                        and time.monotonic() < next_claim
                        and self.config.prefetch
                    ):
                        prefetch = asyncio.create_task(self._fetch(history=False))
                    if batch.entries:
                        await self._process(batch)
                        if self._abandoned:
                            # A retry was cut short: the entries read after the failed one
                            # stay pending (unacknowledged), so they are never acknowledged
                            # before it; the next start takes them all in order.
                            if prefetch is not None:
                                task, prefetch = prefetch, None
                                await self._drop(task)
                            break
                    if failures:
                        _log.info("redis_recovered", domain=self.domain, attempts=failures + 1)
                        failures = 0
                except Exception as exc:
                    if not is_transient(exc):
                        if isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP"):
                            await self._recreate_groups(str(exc))
                            continue
                        raise
                    if self._stopping:
                        break
                    await self._pause_after(exc, failures, "consume")
                    failures += 1
                    # A read whose reply was lost left entries pending on this consumer:
                    # take them first (they are the oldest), before reading new ones.
                    history = True
        finally:
            if prefetch is not None:
                prefetch.cancel()
                with contextlib.suppress(BaseException):
                    await prefetch

    async def _drop(self, task: asyncio.Task[_Batch]) -> None:
        """Let a prefetch finish (a read returns within block_ms) and forget its batch."""
        try:
            batch = await task
        except Exception:  # its entries, if any were read, stay pending on this consumer
            return
        with contextlib.suppress(ValueError):
            self._held.remove(batch)

    async def _fetch(self, *, history: bool) -> _Batch:
        return await self._prepare(await self._read(history=history))

    async def _read(self, *, history: bool) -> list[_Entry]:
        ids = "0" if history else ">"
        streams = dict.fromkeys(self.streams, ids)
        reply: Any = await self.redis.xreadgroup(
            self.group,
            self.config.consumer_name,
            streams,  # type: ignore[arg-type]
            count=self.config.batch_size,
            block=None if history else self.config.block_ms,
        )
        entries: list[_Entry] = []
        items = reply.items() if isinstance(reply, dict) else (reply or [])
        for stream_name, stream_entries in items:
            stream = stream_name.decode() if isinstance(stream_name, bytes) else str(stream_name)
            if (
                isinstance(stream_entries, list)
                and stream_entries
                and isinstance(stream_entries[0], list)
            ):  # RESP3 wraps the entries once more
                stream_entries = stream_entries[0]
            for entry_id, fields in stream_entries:
                # No fields: the entry was trimmed away while pending. Fields without an
                # envelope: a foreign entry, which fails decoding below (dead-lettered).
                data = fields.get(ENVELOPE_FIELD, b"") if fields else None
                entries.append(_Entry(stream, entry_id, data, 1))
        _merge_by_time(entries)
        if history and entries:
            await self._fill_deliveries(entries)
        return entries

    async def _claim_idle(self) -> list[_Entry]:
        """Take over entries another consumer left pending longer than the visibility timeout."""
        entries: list[_Entry] = []
        for stream in self.streams:
            reply = await self.redis.execute_command(  # type: ignore[no-untyped-call]
                "XAUTOCLAIM",
                stream,
                self.group,
                self.config.consumer_name,
                self.config.visibility_timeout_ms,
                "0-0",
                "COUNT",
                self.config.batch_size,
            )
            claimed = reply[1] if reply else []
            for item in claimed:
                if not item:
                    continue
                entry_id, raw_fields = item[0], item[1]
                data = _field(raw_fields, ENVELOPE_FIELD)
                entries.append(_Entry(stream, entry_id, data, 1))
        _merge_by_time(entries)
        if entries:
            await self._fill_deliveries(entries)
            _log.warning(
                "entries_claimed",
                domain=self.domain,
                consumer=self.config.consumer_name,
                count=len(entries),
            )
        return entries

    async def _fill_deliveries(self, entries: list[_Entry]) -> None:
        """Read each entry's delivery count from the pending list (it survives restarts)."""
        by_stream: dict[str, list[_Entry]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry)
        for stream, items in by_stream.items():
            pending = await self.redis.xpending_range(
                stream,
                self.group,
                min=items[0].entry_id,
                max=items[-1].entry_id,
                count=len(items) + 100,
                consumername=self.config.consumer_name,
            )
            counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
            for entry in items:
                entry.deliveries = counts.get(entry.entry_id, entry.deliveries)

    # -- handling a batch -------------------------------------------------------------------

    async def _prepare(self, entries: list[_Entry]) -> _Batch:
        """Decode a read, dead-letter what cannot be opened, and look up processed marks."""
        batch = _Batch(entries)
        self._held.append(batch)  # kept alive from now on, until committed
        commit = batch.commit
        ready = batch.ready
        partitions = self.config.partitions
        for entry in entries:
            if entry.data is None:
                # Trimmed from the stream while it was pending: nothing left to handle.
                _log.warning(
                    "pending_entry_trimmed",
                    domain=self.domain,
                    stream=entry.stream,
                    entry_id=entry.entry_id.decode(),
                )
                commit.ack(entry)
                continue
            try:
                entry.envelope = envelope = decode_envelope(entry.data)
            except EnvelopeError as exc:
                self._dead_letter(commit, entry, exc.reason, exc)
                continue
            if (
                partitions > 1
                and partition_of(envelope.partition_key, partitions) != self.config.partition
            ):
                commit.ack(entry)  # another partition's runner handles this key
                continue
            ready.append(entry)
        try:
            batch.done = await self._already_processed(ready)
        except BaseException:
            self._held.remove(batch)
            raise
        return batch

    async def _process(self, batch: _Batch) -> None:
        try:
            await self._process_batch(batch)
        finally:
            with contextlib.suppress(ValueError):
                self._held.remove(batch)

    async def _process_batch(self, batch: _Batch) -> None:
        self._abandoned = False
        commit = batch.commit
        done = batch.done
        recent = self._recent
        for entry in batch.ready:
            envelope = entry.envelope
            assert envelope is not None
            event_id = envelope.event_id
            if event_id in done or event_id in recent:
                commit.ack(entry)
                self.metrics.skipped.labels(self.domain, envelope.event_type).inc()
                continue
            done.add(event_id)  # a duplicate later in this batch is skipped too
            await self._handle(commit, entry, envelope)
            if self._abandoned:
                break
        await self._commit(commit)

    async def _handle(self, commit: _Commit, entry: _Entry, envelope: Envelope) -> None:
        """Run the handler of one entry, retrying in place; record the result in ``commit``."""
        while True:
            try:
                payload: Message = open_payload(envelope, self.registry)
                started = time.perf_counter()
                outputs = await self._deliver(self.actor, envelope, self.registry, payload)  # otel:
            except Exception as exc:
                if is_permanent(exc):  # no retry can fix it: dead-lettered at once
                    self._dead_letter(commit, entry, reason_of(exc), exc)
                    return
                if entry.deliveries >= self.config.max_deliveries:
                    with _trace_scope(envelope):
                        _log.error(
                            "handler_failed_dead_lettered",
                            domain=self.domain,
                            event_type=envelope.event_type,
                            event_id=envelope.event_id,
                            attempts=entry.deliveries,
                            error=f"{type(exc).__name__}: {exc}",
                        )
                    self._dead_letter(commit, entry, "handler_failed", exc)
                    return
                if not await self._redeliver(commit, entry, envelope, exc):
                    return
                continue
            elapsed = time.perf_counter() - started
            event_type = envelope.event_type
            self.metrics.handler_latency.labels(self.domain, event_type).observe(elapsed)
            commit.outputs.extend(outputs)
            commit.ack(entry)
            commit.processed.append(entry)
            self._remember(envelope.event_id)
            commit.consumed[event_type] = commit.consumed.get(event_type, 0) + 1
            return

    async def _redeliver(
        self, commit: _Commit, entry: _Entry, envelope: Envelope, exc: Exception
    ) -> bool:
        """Commit the work before a failed entry, back off, and deliver it again (XCLAIM).

        Returns False when the entry is no longer ours to retry (acknowledged elsewhere, or
        the runner is stopping: it stays pending and comes back at the next start).
        """
        delay = self._retry.delay(entry.deliveries - 1)
        self.metrics.retries.labels(self.domain, envelope.event_type).inc()
        with _trace_scope(envelope):
            _log.warning(
                "handler_failed_retrying",
                domain=self.domain,
                event_type=envelope.event_type,
                event_id=envelope.event_id,
                attempt=entry.deliveries,
                max_deliveries=self.config.max_deliveries,
                retry_in_s=round(delay, 3),
                error=f"{type(exc).__name__}: {exc}",
            )
        await self._commit(commit)
        commit.clear()
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if self._stopping:
                self._abandoned = True
                return False
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        claimed = await self._with_reconnect(
            "redeliver",
            lambda: self.redis.xclaim(
                entry.stream, self.group, self.config.consumer_name, 0, [entry.entry_id]
            ),
        )
        if not claimed or claimed[0][1] is None:
            return False
        entry.deliveries += 1
        return True

    def _remember(self, event_id: str) -> None:
        recent = self._recent
        recent[event_id] = None
        if len(recent) > self.config.recent_ids:
            recent.popitem(last=False)

    def _dead_letter(self, commit: _Commit, entry: _Entry, reason: Reason, exc: Exception) -> None:
        envelope = entry.envelope
        letter = DeadLetter(
            original_stream=entry.stream,
            original_entry_id=entry.entry_id.decode(),
            payload=entry.data or b"",
            reason=reason,
            error_type=type(exc).__name__,
            error_message=str(exc)[:4_000],
            attempts=entry.deliveries,
            failed_at_ms=now_ms(),
            consumer=self.config.consumer_name,
            event_type=envelope.event_type if envelope is not None else "",
            event_id=envelope.event_id if envelope is not None else "",
        )
        if reason != "handler_failed":
            _log.error(
                "entry_dead_lettered",
                domain=self.domain,
                stream=entry.stream,
                entry_id=letter.original_entry_id,
                reason=reason,
                error=f"{letter.error_type}: {letter.error_message}",
            )
        commit.dead.append(letter)
        commit.ack(entry)
        self.metrics.dead_letters.labels(self.domain, reason).inc()

    async def _already_processed(self, entries: Sequence[_Entry]) -> set[str]:
        if not entries:
            return set()
        buckets: dict[str, list[str]] = {}
        for entry in entries:
            assert entry.envelope is not None
            event_id = entry.envelope.event_id
            entry.bucket = self._processed_prefix + event_id[:PROCESSED_BUCKET_CHARS]
            ids = buckets.get(entry.bucket)
            if ids is None:
                buckets[entry.bucket] = [event_id]
            else:
                ids.append(event_id)

        async def check() -> set[str]:
            if len(buckets) == 1:
                ((key, ids),) = buckets.items()
                replies = [await self.redis.execute_command("SMISMEMBER", key, *ids)]  # type: ignore[no-untyped-call]
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key, ids in buckets.items():
                        pipe.execute_command("SMISMEMBER", key, *ids)
                    replies = await pipe.execute()
            found: set[str] = set()
            for ids, flags in zip(buckets.values(), replies, strict=True):
                found.update(i for i, flag in zip(ids, flags, strict=True) if flag)
            return found

        return await self._with_reconnect("processed-check", check)

    async def _commit(self, commit: _Commit) -> None:
        if not commit:
            return
        if commit.outputs:
            await self._publish(commit.outputs)  # durable before the ack  # otel: _publish
        state = self.actor.snapshot_state()
        keys, args = self._commit_commands(commit, state)

        async def write() -> None:
            await self._commit_script(keys=keys, args=args, client=self.redis)

        await self._with_reconnect("commit", write)
        for stream, ids in commit.acks.items():
            self._last_acked[stream] = max(ids, key=entry_order)
        for event_type, n in commit.consumed.items():
            self.metrics.consumed.labels(self.domain, event_type).inc(n)

    def _commit_commands(self, commit: _Commit, state: bytes | None) -> tuple[list[str], list[Any]]:
        """The commit as COMMIT_SCRIPT's keys and arguments: one key per command, in order."""
        keys: list[str] = []
        args: list[Any] = []

        def add(name: str, key: str, rest: Sequence[Any]) -> None:
            keys.append(key)
            args.extend((len(rest), name, *rest))

        for letter in commit.dead:
            name, key, *rest = xadd_args(self.keyspace, self.domain, letter)
            add(name, key, rest)
        for stream, ids in commit.acks.items():
            for start in range(0, len(ids), _MAX_IDS_PER_COMMAND):
                add("XACK", stream, [self.group, *ids[start : start + _MAX_IDS_PER_COMMAND]])
        buckets: dict[str, list[str]] = {}
        for entry in commit.processed:
            assert entry.envelope is not None
            buckets.setdefault(entry.bucket, []).append(entry.envelope.event_id)
        for key, marks in buckets.items():
            for start in range(0, len(marks), _MAX_IDS_PER_COMMAND):
                add("SADD", key, marks[start : start + _MAX_IDS_PER_COMMAND])
            add("EXPIRE", key, [self.config.processed_ttl_s])
        if state is not None:
            add("SET", self._state_key, [state])
        return keys, args

    async def _publish_outputs(self, outputs: list[Envelope]) -> None:
        failures = 0
        while True:
            try:
                await self.bus.publish_envelopes(outputs)
                return
            except PublishBufferFull as exc:  # Redis is slow or away: wait, never drop
                await self._pause_after(exc, failures, "publish-outputs")
                failures += 1

    # -- groups, state, reconnects ----------------------------------------------------------

    async def _ensure_groups(self) -> None:
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(
                    stream, self.group, id=self.config.start_id, mkstream=True
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _recreate_groups(self, error: str) -> None:
        for stream in self.streams:
            start = self._last_acked.get(stream, self.config.start_id.encode())
            try:
                await self.redis.xgroup_create(stream, self.group, id=start, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" in str(exc):
                    continue
                raise
            _log.warning(
                "consumer_group_recreated",
                domain=self.domain,
                group=self.group,
                stream=stream,
                from_id=start.decode() if isinstance(start, bytes) else start,
                error=error,
                hint="the group was deleted under a running consumer; entries after the last "
                "acknowledged one are read again, those already processed are skipped",
            )

    async def _restore_state(self) -> None:
        data = await self.redis.get(self._state_key)
        if isinstance(data, bytes):
            self.actor.restore_state(data)
            _log.info("actor_state_restored", domain=self.domain, size=len(data))

    async def _with_reconnect(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call``; on connection errors, back off and run it again until it succeeds."""
        failures = 0
        while True:
            try:
                return await call()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                await self._pause_after(exc, failures, what)
                failures += 1

    async def _pause_after(self, exc: BaseException, failures: int, what: str) -> None:
        self.metrics.redis_errors.labels("runner").inc()
        delay = self._reconnect.delay(failures)
        _log.warning(
            "redis_unavailable",
            domain=self.domain,
            during=what,
            error=f"{type(exc).__name__}: {exc}",
            attempt=failures + 1,
            retry_in_s=round(delay, 3),
        )
        await asyncio.sleep(delay)

    # -- background duties ------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(*_BACKGROUND_ERRORS):  # the consume loop reports outages
                await self.redis.hset(self._heartbeat_key, self.config.consumer_name, str(now_ms()))
            await asyncio.sleep(self.config.heartbeat_interval_s)

    async def _keepalive_loop(self) -> None:
        """Reset the idle time of entries in hand, so no one claims work still being done."""
        interval = self.config.visibility_timeout_ms / 3000
        while not self._stopping:
            await asyncio.sleep(interval)
            by_stream: dict[str, list[Any]] = {}
            for batch in list(self._held):
                for entry in batch.entries:
                    by_stream.setdefault(entry.stream, []).append(entry.entry_id)
            for stream, ids in by_stream.items():
                with contextlib.suppress(*_BACKGROUND_ERRORS):
                    await self.redis.xclaim(
                        stream, self.group, self.config.consumer_name, 0, ids, justid=True
                    )

    async def _stats_loop(self) -> None:
        """Sample lag and pending per stream (XINFO GROUPS): periodically, not per event."""
        while not self._stopping:
            for stream in self.streams:
                try:
                    groups = await self.redis.xinfo_groups(stream)
                except _BACKGROUND_ERRORS:
                    continue
                for info in groups:
                    name = info.get("name")
                    if (name.decode() if isinstance(name, bytes) else name) != self.group:
                        continue
                    self.metrics.pending.labels(self.group, stream).set(float(info["pending"]))
                    lag = info.get("lag")
                    if lag is not None:
                        self.metrics.lag.labels(self.group, stream).set(float(lag))
            await asyncio.sleep(self.config.group_stats_interval_s)


def _field(raw: Any, name: bytes) -> bytes | None:
    """A field of a raw stream entry (a flat [k, v, k, v] list, or a dict); b"" when absent,
    None when the entry itself is gone."""
    if raw is None:
        return None
    if isinstance(raw, dict):
        value = raw.get(name)
        return value if isinstance(value, bytes) else b""
    for index in range(0, len(raw) - 1, 2):
        if raw[index] == name:
            value = raw[index + 1]
            return value if isinstance(value, bytes) else b""
    return b""


def _trace_scope(envelope: Envelope) -> contextlib.AbstractContextManager[object]:
    """The envelope's trace for a log line; none if its ids are unusable (never raises)."""
    try:
        trace = trace_of(envelope)
    except ValueError:
        return contextlib.nullcontext()
    return tracing.use(trace)


def _merge_by_time(entries: list[_Entry]) -> None:
    """Order a read of several streams by entry id (time): a stable sort, so each stream's
    own order is kept. Entry ids are in milliseconds: within one millisecond, entries of two
    streams are a tie (kept in stream name order). Time order holds within one read; a
    stream with a backlog longer than ``batch_size`` can still hand newer entries of another
    stream in the same read."""
    if len(entries) > 1 and entries[0].stream != entries[-1].stream:
        entries.sort(key=lambda entry: entry_order(entry.entry_id))


def entry_order(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id as (milliseconds, sequence): how Redis orders them."""
    raw = entry_id.encode() if isinstance(entry_id, str) else entry_id
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq or 0)
