"""The delivery loop: one actor fed from its subscription, with the delivery guarantees.

Broker-neutral: it speaks only the interfaces of ``runtime.core.transport``; an engine's
adapter supplies them. Per batch: fetch many entries, decode them, skip those already
processed, run the actor's handlers one at a time, then hand everything the batch did —
outputs, acknowledgements, processed marks, dead letters, trace index, state — to the
committer as one atomic commit.

Why each step is where it is (DESIGN section 4):
- the outputs are committed with the acknowledgement (at-least-once without duplicates in
  the common case): a crash before the commit redelivers the inputs, whose outputs come out
  again with the same ids (derived from the input); a commit that landed is never half-done;
- the processed marks make a duplicate entry of one event (a publisher's retry after a lost
  reply, a redelivery after a crash between commit and reply) a no-op (effectively-once);
- a failure is classified (``runtime.core.failures``): a permanent one (undecodable, unknown
  type, invalid at a domain's door, arithmetic on bad input) is dead-lettered at once; a
  transient one is retried in place with backoff after committing the work before it — each
  retry is a new delivery, so the attempt count lives in the broker and survives restarts —
  and is dead-lettered after ``max_deliveries``; the actor goes on either way;
- a consumer first finishes what it holds pending from a previous life, in order, before it
  reads new entries; entries a dead consumer left behind are claimed after the visibility
  timeout, and entries in hand are kept alive so a slow handler keeps its work;
- broker errors the engine calls transient are retried with capped backoff, forever: nothing
  is acknowledged that was not handled; a group deleted under a running consumer is
  recreated where it last acknowledged.

Per event the loop does no network round trip, no task creation, no await for a sync handler
and no OpenTelemetry work; metrics are added up per batch.

Ordering: one loop handles its entries in fetch order (each stream's order, streams merged by
time). With ``partitions=N`` each loop reads through its own group and handles only the keys
that hash to its partition, so a key is always handled by one loop, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

from quantum.events.v1.envelope_pb2 import Envelope

from runtime.core import otel, tracing
from runtime.core.actor import Actor, Dispatcher
from runtime.core.backoff import Backoff
from runtime.core.dead_letters import DeadLetter, Reason, now_ms
from runtime.core.envelope import EnvelopeError, decode_envelope
from runtime.core.failures import is_permanent, reason_of
from runtime.core.logs import get_logger
from runtime.core.metrics import RuntimeMetrics, runtime_metrics
from runtime.core.partitioning import UNPARTITIONED, Partitioning, partition_of
from runtime.core.registry import EventRegistry, default_registry
from runtime.core.transport import Commit, Committer, Delivery, Lease, LeaseLost, Subscription

T = TypeVar("T")

_log = get_logger("runtime.delivery")


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    """How one delivery loop consumes. Only ``consumer_name`` has no sensible default."""

    consumer_name: str
    batch_size: int = 500
    block_ms: int = 1_000
    max_deliveries: int = 5
    lease_ttl_ms: int = 5_000  # a dead owner's partition is taken over after this long
    retry_base_ms: int = 100
    retry_cap_ms: int = 5_000
    reconnect_base_ms: int = 50
    reconnect_cap_ms: int = 2_000
    # How long a processed mark is kept: while a duplicate entry of an event can still
    # arrive (a publisher's retry after a lost reply lands right behind the original).
    processed_ttl_s: int = 600
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
        if self.batch_size < 1 or self.block_ms < 1:
            raise ValueError("batch_size and block_ms must be positive")
        if self.lease_ttl_ms < 100:
            raise ValueError(f"lease_ttl_ms must be at least 100 ms; got {self.lease_ttl_ms}")


def input_streams(
    actor: Actor,
    stream_of: Callable[[str], str],
    registry: EventRegistry | None = None,
    *,
    partitioning: Partitioning = UNPARTITIONED,
    partition: int = 0,
    partitions: int = 1,
) -> list[str]:
    """The streams an actor reads, named by its engine (``stream_of`` topic), sorted: of each
    type it handles, the topics this partition of the domain reads (``partitioning``); refuses
    an actor with no name or no handlers, before any engine object is built."""
    if not actor.name:
        raise ValueError(f"{type(actor).__name__}.name is empty; every actor needs a name")
    streams = sorted(
        {
            stream_of(topic)
            for t in type(actor).consumes(registry)
            for topic in partitioning.topics_read_by(t.name, partition, partitions)
        }
    )
    if not streams:
        raise ValueError(f"{type(actor).__name__} has no @handles methods; nothing to consume")
    return streams


def entry_order(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``) as a sortable pair."""
    raw = entry_id.encode() if isinstance(entry_id, str) else entry_id
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq or 0)


class _Batch:
    """One fetch, prepared: what to handle, what is already processed, what to commit."""

    __slots__ = ("commit", "deliveries", "done", "ready")

    def __init__(self, deliveries: list[Delivery]) -> None:
        self.deliveries = deliveries
        self.ready: list[Delivery] = []
        self.done: set[str] = set()
        self.commit = Commit()


class DeliveryLoop:
    """Runs one actor on its subscription, committing through its committer. See the module doc."""

    def __init__(
        self,
        actor: Actor,
        subscription: Subscription,
        committer: Committer,
        config: RunnerConfig,
        *,
        group: str,
        registry: EventRegistry | None = None,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        if not actor.name:
            raise ValueError(f"{type(actor).__name__}.name is empty; every actor needs a name")
        self.actor = actor
        self.subscription = subscription
        self.committer = committer
        self.config = config
        self.group = group
        self.registry = registry or default_registry()
        self.metrics = metrics or runtime_metrics()
        self.domain = actor.name
        self.streams = list(subscription.streams)
        self._dispatcher = Dispatcher(actor, self.registry)
        # Spans are chosen once, here: with export off these are the plain callables, and the
        # hot path makes no OpenTelemetry call at all.
        self._dispatch = (
            otel.traced_dispatch(self._dispatcher.dispatch, self.domain)
            if otel.ENABLED
            else self._dispatcher.dispatch
        )
        self._traced_commit = (
            otel.traced_commit(committer.commit, self.domain) if otel.ENABLED else None
        )
        self._retry = Backoff(config.retry_base_ms / 1000, config.retry_cap_ms / 1000)
        self._reconnect = Backoff(config.reconnect_base_ms / 1000, config.reconnect_cap_ms / 1000)
        # A holder id per incarnation: a restarted process is a new owner, never the old one.
        self._holder = f"{config.consumer_name}/{os.urandom(4).hex()}"
        self._lease: Lease | None = None
        self._lease_lost = False
        self._initial_state: bytes | None = None
        # The snapshot the partition's state key holds (as far as this loop knows): a commit
        # whose snapshot equals it leaves the stored one alone (no SET of an unchanged state).
        self._stored_state: bytes | None = None
        self._held: list[_Batch] = []  # fetched and not yet committed
        self._last_acked: dict[str, bytes] = {}  # per stream: where a recreated group starts
        self._recent: OrderedDict[str, None] = OrderedDict()  # ids handled lately
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._running = False
        self._done = asyncio.Event()
        self._done.set()
        self._abandoned = False  # a retry was cut short by stop(): leave the rest pending

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until ``stop()``; returns after the in-flight batch is committed."""
        if self._running:
            raise RuntimeError(f"runner of {self.domain} is already running")
        try:
            await self._run()
        finally:
            # What the engine opened for this loop (connections, watchers) closes with it.
            await self.subscription.close()
            await self.committer.close()

    async def _run(self) -> None:
        self._running = True
        self._stopping = False
        self._stop_requested.clear()
        self._done.clear()
        background: list[asyncio.Task[None]] = []
        try:
            await self._with_reconnect("start", self.subscription.open)
            self._initial_state = self.actor.snapshot_state()
            await self.actor.on_start()
            background = [
                asyncio.create_task(self._heartbeat_loop(), name=f"{self.domain}-heartbeat"),
                asyncio.create_task(self._stats_loop(), name=f"{self.domain}-group-stats"),
            ]
            _log.info(
                "runner_started",
                domain=self.domain,
                group=self.group,
                consumer=self.config.consumer_name,
                streams=self.streams,
            )
            while not self._stopping:
                renewal: asyncio.Task[None] | None = None
                try:
                    if not await self._become_owner():
                        break  # stopped while standing by
                    renewal = asyncio.create_task(self._renew_loop(), name=f"{self.domain}-lease")
                    await self._consume()
                except LeaseLost as exc:  # while taking over too: stand by again
                    self._lease = None
                    await self._restore_committed_state()
                    _log.warning(
                        "partition_lost",
                        domain=self.domain,
                        group=self.group,
                        holder=self._holder,
                        error=str(exc),
                        hint="another owner took over; uncommitted work is dropped and this "
                        "process stands by",
                    )
                    continue
                finally:
                    if renewal is not None:
                        renewal.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await renewal
                break
            await self.actor.on_stop()
        finally:
            self._stopping = True
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._lease is not None:
                lease, self._lease = self._lease, None
                with contextlib.suppress(Exception):
                    await self.committer.release(lease)
            self._running = False
            self._done.set()
            _log.info("runner_stopped", domain=self.domain, consumer=self.config.consumer_name)

    async def _become_owner(self) -> bool:
        """Stand by until this process owns the partition; then load its state and take over
        what the last owner left pending. False when stopped first."""
        ttl = self.config.lease_ttl_ms
        waiting = False
        while not self._stopping:
            lease = await self._with_reconnect(
                "lease", lambda: self.committer.acquire(self._holder, ttl)
            )
            if lease is not None:
                break
            if not waiting:
                waiting = True
                _log.info(
                    "partition_standby",
                    domain=self.domain,
                    group=self.group,
                    holder=self._holder,
                    hint="another process owns this partition; this one takes over when its "
                    "lease expires",
                )
            await self._sleep_unless_stopping(ttl / 3000)
        else:
            return False
        self._lease = lease
        await self._restore_committed_state()
        taken = await self._with_reconnect("take-over", self.subscription.take_over)
        _log.info(
            "partition_owned",
            domain=self.domain,
            group=self.group,
            holder=self._holder,
            token=lease.token,
            taken_over=taken,
        )
        return True

    async def _restore_committed_state(self) -> None:
        """Make the actor's memory what the partition's last commit stored (its previous
        owner's, or this process's before a lost lease voided its uncommitted work)."""
        self._recent.clear()
        state = await self._with_reconnect("restore", self.committer.load_state)
        self._stored_state = state
        if state is None:
            state = self._initial_state
        if state is not None:
            self.actor.restore_state(state)
            _log.info("actor_state_restored", domain=self.domain, size=len(state))

    async def _renew_loop(self) -> None:
        """Extend the lease every third of its TTL; a lease found lost stops the consuming."""
        ttl = self.config.lease_ttl_ms
        while not self._stopping:
            await asyncio.sleep(ttl / 3000)
            lease = self._lease
            if lease is None:
                return
            try:
                if not await self.committer.renew(lease, ttl):
                    self._lease_lost = True  # the consume loop stops at its next turn
                    return
            except Exception as exc:
                if not self.committer.is_transient(exc):
                    _log.warning("lease_renewal_failed", domain=self.domain, error=str(exc))

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), seconds)

    async def stop(self) -> None:
        """Stop reading, finish and commit the batch in hand; wait for ``run`` to return."""
        self._stopping = True
        self._stop_requested.set()
        await self._done.wait()

    @property
    def running(self) -> bool:
        return self._running

    @property
    def stopping(self) -> bool:
        return self._stopping

    # -- the consume loop -------------------------------------------------------------------

    async def _consume(self) -> None:
        failures = 0
        history = True  # first the pending entries (what the last owner left, in order)
        self._lease_lost = False
        self._held.clear()
        # While a batch is handled, the next one is fetched (and checked against the processed
        # marks): the round trips overlap the handling instead of adding to it.
        prefetch: asyncio.Task[_Batch] | None = None
        try:
            while True:
                try:
                    if self._lease_lost:
                        raise LeaseLost(f"{self.domain}: the lease could not be renewed")
                    if prefetch is not None:
                        task, prefetch = prefetch, None
                        batch = await task  # a fetch is never cancelled: it returns in block_ms
                    elif self._stopping:
                        break
                    elif history:
                        batch = await self._fetch(history=True)
                        if not batch.deliveries:
                            history = False
                            continue
                    else:
                        batch = await self._fetch(history=False)
                    if not history and not self._stopping and self.config.prefetch:
                        prefetch = asyncio.create_task(self._fetch(history=False))
                    if batch.deliveries:
                        await self._process(batch)
                        if self._abandoned:
                            # A retry was cut short: the entries fetched after the failed one
                            # stay pending (unacknowledged), so they are never acknowledged
                            # before it; the next start takes them all in order.
                            if prefetch is not None:
                                task, prefetch = prefetch, None
                                await self._drop(task)
                            break
                    if failures:
                        _log.info("broker_recovered", domain=self.domain, attempts=failures + 1)
                        failures = 0
                except LeaseLost:
                    raise
                except Exception as exc:
                    if not self.subscription.is_transient(exc):
                        if await self._recreate_groups(exc):
                            continue
                        raise
                    if self._stopping:
                        break
                    await self._pause_after(exc, failures, "consume")
                    failures += 1
                    # A fetch whose reply was lost left entries pending on this consumer:
                    # take them first (they are the oldest), before reading new ones.
                    history = True
        finally:
            if prefetch is not None:
                prefetch.cancel()
                with contextlib.suppress(BaseException):
                    await prefetch

    async def _recreate_groups(self, error: BaseException) -> bool:
        """A group deleted under a running consumer: recreate it after the last entry this
        loop acknowledged; True when ``error`` was that."""
        recreated = await self.subscription.recreate(error, self._last_acked)
        if recreated is None:
            return False
        for stream, start in recreated:
            _log.warning(
                "consumer_group_recreated",
                domain=self.domain,
                group=self.group,
                stream=stream,
                from_id=start.decode(),
                error=str(error),
                hint="the group was deleted under a running consumer; entries after the last "
                "acknowledged one are read again, those already processed are skipped",
            )
        return True

    async def _drop(self, task: asyncio.Task[_Batch]) -> None:
        """Let a prefetch finish (a fetch returns within block_ms) and forget its batch."""
        try:
            batch = await task
        except Exception:  # its entries, if any were fetched, stay pending on this consumer
            return
        with contextlib.suppress(ValueError):
            self._held.remove(batch)

    async def _fetch(self, *, history: bool) -> _Batch:
        deliveries = await self.subscription.fetch(
            pending=history, count=self.config.batch_size, block_ms=self.config.block_ms
        )
        return await self._prepare(deliveries)

    # -- handling a batch -------------------------------------------------------------------

    async def _prepare(self, deliveries: list[Delivery]) -> _Batch:
        """Decode a fetch, dead-letter what cannot be opened, and look up processed marks."""
        batch = _Batch(deliveries)
        self._held.append(batch)  # kept alive from now on, until committed
        commit = batch.commit
        ready = batch.ready
        partitions = self.config.partitions
        for delivery in deliveries:
            data = delivery.data
            if data is None:
                # Trimmed from the stream while it was pending: nothing left to handle.
                _log.warning(
                    "pending_entry_trimmed",
                    domain=self.domain,
                    stream=delivery.stream,
                    entry_id=delivery.entry_id.decode(),
                )
                commit.ack(delivery)
                continue
            try:
                delivery.envelope = envelope = decode_envelope(data)
            except EnvelopeError as exc:
                self._dead_letter(commit, delivery, exc.reason, exc)
                continue
            if (
                partitions > 1
                and partition_of(envelope.partition_key, partitions) != self.config.partition
            ):
                commit.ack(delivery)  # another partition's loop handles this key
                continue
            ready.append(delivery)
        if ready:
            ids = [d.envelope.event_id for d in ready]  # type: ignore[union-attr]
            try:
                batch.done = await self.subscription.processed(ids)
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
        dispatch = self._dispatch
        clock = time.perf_counter
        skipped: dict[str, int] = {}
        latency: dict[str, list[float]] = {}
        for delivery in batch.ready:
            envelope = delivery.envelope
            assert envelope is not None
            event_id = envelope.event_id
            if event_id in done or event_id in recent:
                commit.ack(delivery)
                event_type = envelope.event_type
                skipped[event_type] = skipped.get(event_type, 0) + 1
                continue
            done.add(event_id)  # a duplicate later in this batch is skipped too
            # The common case inline: a sync handler that succeeds costs no coroutine. An
            # async handler, or any failure, takes the full path (retries, dead letters).
            started = clock()
            try:
                outputs = dispatch(envelope)
            except Exception as exc:
                await self._handle(commit, delivery, envelope, latency, started, failed=exc)
            else:
                if type(outputs) is list:
                    self._record(commit, delivery, envelope, outputs, clock() - started, latency)
                    continue
                running = cast(Awaitable[list[Envelope]], outputs)  # an async handler's
                await self._handle(commit, delivery, envelope, latency, started, running=running)
            if self._abandoned:
                break
        await self._commit(commit)
        metrics = self.metrics
        for event_type, n in skipped.items():
            metrics.skipped.labels(self.domain, event_type).inc(n)
        for event_type, samples in latency.items():
            child = metrics.handler_latency.labels(self.domain, event_type)
            for elapsed in samples:
                child.observe(elapsed)

    @staticmethod
    def _record(
        commit: Commit,
        delivery: Delivery,
        envelope: Envelope,
        outputs: list[Envelope],
        elapsed: float,
        latency: dict[str, list[float]],
    ) -> None:
        """Note a handled entry in the batch's commit."""
        event_type = envelope.event_type
        samples = latency.get(event_type)
        if samples is None:
            latency[event_type] = [elapsed]
        else:
            samples.append(elapsed)
        if outputs:
            commit.outputs.extend(outputs)
            if not envelope.causation_id:  # a root: no earlier commit indexed it
                commit.indexed.append(envelope)
        commit.ack(delivery)
        commit.processed.append(envelope.event_id)
        consumed = commit.consumed
        consumed[event_type] = consumed.get(event_type, 0) + 1

    async def _handle(
        self,
        commit: Commit,
        delivery: Delivery,
        envelope: Envelope,
        latency: dict[str, list[float]],
        started: float,
        *,
        failed: Exception | None = None,
        running: Awaitable[list[Envelope]] | None = None,
    ) -> None:
        """The full path of one entry: finish its first attempt (an async handler ``running``,
        or the exception it ``failed`` with), retry transient failures in place, dead-letter
        permanent ones and the exhausted; record the result in ``commit``."""
        while True:
            try:
                if failed is not None:
                    raise failed
                if running is None:
                    started = time.perf_counter()
                    result = self._dispatch(envelope)
                    running = None if isinstance(result, list) else result
                    outputs = result if isinstance(result, list) else await result
                else:
                    outputs = await running
            except Exception as exc:
                failed = running = None
                if is_permanent(exc):  # no retry can fix it: dead-lettered at once
                    self._dead_letter(commit, delivery, reason_of(exc), exc)
                    return
                if delivery.deliveries >= self.config.max_deliveries:
                    with _trace_scope(envelope):
                        _log.error(
                            "handler_failed_dead_lettered",
                            domain=self.domain,
                            event_type=envelope.event_type,
                            event_id=envelope.event_id,
                            attempts=delivery.deliveries,
                            error=f"{type(exc).__name__}: {exc}",
                        )
                    self._dead_letter(commit, delivery, "handler_failed", exc)
                    return
                if not await self._redeliver(commit, delivery, envelope, exc):
                    return
                continue
            self._record(
                commit, delivery, envelope, outputs, time.perf_counter() - started, latency
            )
            return

    async def _redeliver(
        self, commit: Commit, delivery: Delivery, envelope: Envelope, exc: Exception
    ) -> bool:
        """Commit the work before a failed entry, back off, and deliver it again.

        Returns False when the loop is stopping (the entry stays pending and comes back at
        the next start); raises ``LeaseLost`` when the entry is no longer ours to retry.
        """
        delay = self._retry.delay(delivery.deliveries - 1)
        self.metrics.retries.labels(self.domain, envelope.event_type).inc()
        with _trace_scope(envelope):
            _log.warning(
                "handler_failed_retrying",
                domain=self.domain,
                event_type=envelope.event_type,
                event_id=envelope.event_id,
                attempt=delivery.deliveries,
                max_deliveries=self.config.max_deliveries,
                retry_in_s=round(delay, 3),
                error=f"{type(exc).__name__}: {exc}",
            )
        await self._commit(commit)
        commit.clear()
        await self._sleep_unless_stopping(delay)
        if self._stopping:
            self._abandoned = True
            return False
        if not await self._with_reconnect(
            "redeliver", lambda: self.subscription.redeliver(delivery)
        ):
            # Not ours any more (another owner has it, or it is gone): going on with the
            # entries after it would let them overtake it. Roll back and stand by instead.
            raise LeaseLost(
                f"{self.domain}: entry {delivery.entry_id.decode()} of {delivery.stream} is "
                "no longer this consumer's to retry"
            )
        return True

    def _remember(self, event_ids: list[str]) -> None:
        """Keep the ids of a committed batch in memory (a duplicate in flight is skipped
        without a lookup); the oldest go once there are more than ``recent_ids``."""
        recent = self._recent
        recent.update(dict.fromkeys(event_ids))
        excess = len(recent) - self.config.recent_ids
        for _ in range(max(0, excess)):
            recent.popitem(last=False)

    def _dead_letter(
        self, commit: Commit, delivery: Delivery, reason: Reason, exc: Exception
    ) -> None:
        envelope = delivery.envelope
        letter = DeadLetter(
            original_stream=delivery.stream,
            original_entry_id=delivery.entry_id.decode(),
            payload=delivery.data or b"",
            reason=reason,
            error_type=type(exc).__name__,
            error_message=str(exc)[:4_000],
            attempts=delivery.deliveries,
            failed_at_ms=now_ms(),
            consumer=self.config.consumer_name,
            event_type=envelope.event_type if envelope is not None else "",
            event_id=envelope.event_id if envelope is not None else "",
        )
        if reason != "handler_failed":
            _log.error(
                "entry_dead_lettered",
                domain=self.domain,
                stream=delivery.stream,
                entry_id=letter.original_entry_id,
                reason=reason,
                error=f"{letter.error_type}: {letter.error_message}",
            )
        commit.dead.append(letter)
        commit.ack(delivery)
        self.metrics.dead_letters.labels(self.domain, reason).inc()

    async def _commit(self, commit: Commit) -> None:
        if not commit:
            return
        state = self.actor.snapshot_state()
        commit.state = None if state == self._stored_state else state
        commit.lease = self._lease
        store = self._traced_commit or self.committer.commit
        await self._with_reconnect("commit", lambda: store(commit))
        if commit.state is not None:
            self._stored_state = commit.state
        last = self._last_acked
        for stream, ids in commit.acks.items():
            # A commit acknowledges a stream's entries in the order they were fetched, which
            # is stream order: the last is the newest.
            known = last.get(stream)
            if known is None or entry_order(ids[-1]) > entry_order(known):
                last[stream] = ids[-1]
        self._remember(commit.processed)
        metrics = self.metrics
        for event_type, n in commit.consumed.items():
            metrics.consumed.labels(self.domain, event_type).inc(n)
        if commit.outputs:
            counts: dict[str, int] = {}
            for output in commit.outputs:
                counts[output.event_type] = counts.get(output.event_type, 0) + 1
            for event_type, n in counts.items():
                metrics.published.labels(event_type).inc(n)

    # -- reconnects -------------------------------------------------------------------------

    async def _with_reconnect(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call``; on transient broker errors, back off and run it again until it works."""
        failures = 0
        while True:
            try:
                return await call()
            except Exception as exc:
                if not self.subscription.is_transient(exc):
                    raise
                await self._pause_after(exc, failures, what)
                failures += 1

    async def _pause_after(self, exc: BaseException, failures: int, what: str) -> None:
        self.metrics.redis_errors.labels("runner").inc()
        delay = self._reconnect.delay(failures)
        _log.warning(
            "broker_unavailable",
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
            await self._background("heartbeat", self._beat)
            await asyncio.sleep(self.config.heartbeat_interval_s)

    async def _beat(self) -> None:
        await self.committer.heartbeat(self.config.consumer_name, now_ms())

    async def _stats_loop(self) -> None:
        """Sample lag and pending per stream: periodically, never per event."""
        while not self._stopping:
            await self._background("group-stats", self._sample_positions)
            await asyncio.sleep(self.config.group_stats_interval_s)

    async def _sample_positions(self) -> None:
        for position in await self.subscription.positions():
            self.metrics.pending.labels(self.group, position.stream).set(float(position.pending))
            if position.lag is not None:
                self.metrics.lag.labels(self.group, position.stream).set(float(position.lag))

    async def _background(self, duty: str, call: Callable[[], Awaitable[None]]) -> None:
        """Run one background duty; it outlives broker errors (the consume loop reports
        outages) and says what else went wrong."""
        try:
            await call()
        except Exception as exc:
            if self.subscription.is_transient(exc):
                return
            _log.warning(
                "background_duty_failed",
                domain=self.domain,
                duty=duty,
                error=f"{type(exc).__name__}: {exc}",
            )


def _trace_scope(envelope: Envelope) -> contextlib.AbstractContextManager[object]:
    """The envelope's trace for a log line; none if its ids are unusable (never raises)."""
    try:
        trace = tracing.TraceContext(
            trace_id=envelope.trace_id,
            span_id=envelope.span_id,
            parent_span_id=envelope.parent_span_id,
        )
    except ValueError:
        return contextlib.nullcontext()
    return tracing.use(trace)


def merge_by_time(deliveries: list[Delivery]) -> None:
    """Order a fetch of several streams by entry id (time): a stable sort, so each stream's
    own order is kept. Within one millisecond, entries of two streams are a tie (kept in
    stream order). Time order holds within one fetch; a stream with a backlog longer than the
    batch can still hand newer entries of another stream in the same fetch."""
    if len(deliveries) > 1 and deliveries[0].stream != deliveries[-1].stream:
        deliveries.sort(key=lambda delivery: entry_order(delivery.entry_id))


__all__: Sequence[str] = (
    "DeliveryLoop",
    "RunnerConfig",
    "entry_order",
    "merge_by_time",
    "partition_of",
)
