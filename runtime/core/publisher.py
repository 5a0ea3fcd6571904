"""The publisher: batching, retrying, bounded publishing of envelopes to an event log.

``publish`` returns once the event is stored (the log's append answered), never earlier, so a
caller that saw success can rely on the event. Under load, concurrent publishes coalesce: one
flusher task takes everything queued since its last round trip and appends it as one batch,
so the cost of a round trip is shared; when idle, a publish goes out on the next loop
iteration (no timer, well under 1 ms). ``publish_nowait`` queues without a coroutine and
returns the future of the entry ids: the batch-first producer API.

When the broker is unreachable the flusher retries the same batch, in order, with capped
exponential backoff (the log reconnects by itself). Publishes queue meanwhile, up to
``max_buffer`` events; past that ``publish`` raises ``PublishBufferFull`` instead of dropping.
A batch retried after a lost reply may land twice; consumers skip the duplicate by event id.

Broker-neutral: it speaks ``runtime.core.transport.EventLog`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping

from google.protobuf.message import Message
from quantum.events.v1.envelope_pb2 import Envelope

from runtime.core import otel  # otel: the import
from runtime.core.backoff import Backoff
from runtime.core.envelope import seal
from runtime.core.logs import get_logger
from runtime.core.metrics import RuntimeMetrics, runtime_metrics
from runtime.core.partitioning import UNPARTITIONED, Partitioning
from runtime.core.registry import EventRegistry, default_registry
from runtime.core.transport import EventLog

DEFAULT_MAX_BUFFER = 100_000
DEFAULT_MAX_BATCH = 1_000

_log = get_logger("runtime.publisher")


class PublishBufferFull(RuntimeError):
    """The publish buffer is full (the broker slow or unreachable); the event was not accepted."""


class BusClosed(RuntimeError):
    """The bus was closed; nothing more can be published through it."""


class PublishTimeout(RuntimeError):
    """``flush``/``close`` with a timeout: events were still unsent (the broker slow or away)."""


class _Waiter:
    """The caller of one publish call, waiting for the stream ids of its envelopes."""

    __slots__ = ("future", "ids", "remaining")

    def __init__(self, future: asyncio.Future[list[str]], count: int) -> None:
        self.future = future
        self.ids: list[str] = [""] * count
        self.remaining = count


class _Queued:
    """One envelope waiting for its append."""

    __slots__ = ("data", "event_type", "index", "topic", "trace_id", "waiter")

    def __init__(
        self,
        event_type: str,
        topic: str,
        trace_id: str,
        data: bytes,
        waiter: _Waiter,
        index: int,
    ) -> None:
        self.event_type = event_type
        self.topic = topic  # the partition of the type's log it goes to
        self.trace_id = trace_id  # for the batch span, when spans are exported
        self.data = data
        self.waiter = waiter
        self.index = index


class Publisher:
    """Publishes envelopes to an ``EventLog`` with batching, retries and a bounded buffer."""

    def __init__(
        self,
        log: EventLog,
        *,
        producer: str = "",
        registry: EventRegistry | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        max_batch: int = DEFAULT_MAX_BATCH,
        linger_ms: float = 0.0,
        backoff: Backoff | None = None,
        metrics: RuntimeMetrics | None = None,
        partitioning: Partitioning | None = None,
    ) -> None:
        if max_buffer < 1 or max_batch < 1:
            raise ValueError("max_buffer and max_batch must be at least 1")
        if not 0.0 <= linger_ms <= 1.0:
            raise ValueError(f"linger_ms must be between 0 and 1 ms; got {linger_ms}")
        self.log = log
        self.partitioning = partitioning or UNPARTITIONED
        self.producer = producer
        self.registry = registry or default_registry()
        self.max_buffer = max_buffer
        self.max_batch = max_batch
        self.linger_s = linger_ms / 1000.0
        self.backoff = backoff or Backoff(base_s=0.05, cap_s=2.0)
        self.metrics = metrics or runtime_metrics()
        self._queue: list[_Queued] = []
        self._wakeup: asyncio.Event | None = None
        self._progress: asyncio.Event | None = None  # set whenever a batch settles
        self._accepted = 0  # events queued so far
        self._settled = 0  # events sent or failed so far (in queue order)
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self._send_batch = otel.traced_send(self._send) if otel.ENABLED else self._send  # otel:

    # -- publishing -------------------------------------------------------------------------

    async def publish(
        self,
        payload: Message,
        *,
        partition_key: str = "",
        causation_id: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> Envelope:
        """Seal ``payload`` in the current trace context and publish it; return the envelope."""
        envelope = seal(
            payload,
            producer=self.producer,
            partition_key=partition_key,
            causation_id=causation_id,
            headers=headers,
            registry=self.registry,
        )
        await self._submit([envelope])
        return envelope

    async def publish_many(
        self,
        payloads: Iterable[Message],
        *,
        partition_key: str = "",
        causation_id: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> list[Envelope]:
        """Publish several payloads in order, in one batch; return their envelopes."""
        envelopes = [
            seal(
                payload,
                producer=self.producer,
                partition_key=partition_key,
                causation_id=causation_id,
                headers=headers,
                registry=self.registry,
            )
            for payload in payloads
        ]
        if envelopes:
            await self._submit(envelopes)
        return envelopes

    async def publish_envelope(self, envelope: Envelope) -> str:
        """Publish a ready envelope as it is; return its stream entry id."""
        return (await self._submit([envelope]))[0]

    async def publish_envelopes(self, envelopes: Iterable[Envelope]) -> list[str]:
        """Publish ready envelopes in order, in one batch; return their stream entry ids."""
        batch = list(envelopes)
        if not batch:
            return []
        return await self._submit(batch)

    def publish_nowait(
        self,
        payload: Message,
        *,
        partition_key: str = "",
        causation_id: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> asyncio.Future[list[str]]:
        """Queue ``payload`` without awaiting; the future holds its entry id once stored.

        The batch-first form of ``publish``: a producer that queues many events and awaits
        the last future (or ``flush``) pays no coroutine per event.
        """
        envelope = seal(
            payload,
            producer=self.producer,
            partition_key=partition_key,
            causation_id=causation_id,
            headers=headers,
            registry=self.registry,
        )
        return self._submit([envelope])

    # ``timeout`` rather than the caller's asyncio.timeout (ASYNC109): expiring, these say how
    # many events are unsent, and close() still closes, which a cancellation could not.
    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until everything queued before this call has been sent (or has failed).

        With ``timeout`` (seconds), raise ``PublishTimeout`` when that has not happened by
        then; the events stay queued and are still retried. None waits as long as it takes.
        """
        target = self._accepted
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                while self._settled < target:
                    progress = self._progress
                    assert progress is not None
                    progress.clear()
                    await progress.wait()
        except TimeoutError:
            if not deadline.expired():
                raise
            unsent = target - self._settled
            _log.error(
                "publish_flush_timed_out",
                unsent=unsent,
                buffered=len(self._queue),
                timeout_s=timeout,
            )
            raise PublishTimeout(
                f"{unsent} events were not confirmed by the broker within {timeout} s; it is "
                "slow or unreachable (they stay queued and are retried)"
            ) from None

    async def close(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Flush, then stop the flusher; later publishes raise ``BusClosed``.

        With ``timeout`` (seconds), the bus closes even when events are still unsent then:
        they are given up (logged with their count), their publishers get ``PublishTimeout``
        and so does the caller. None waits as long as it takes (the broker back).
        """
        if self._closed:
            return
        timed_out: PublishTimeout | None = None
        try:
            await self.flush(timeout)
        except PublishTimeout as exc:
            timed_out = exc
        self._closed = True
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if not self._queue:
            return
        # Given up: the timeout expired, or publishes raced the close. Their publishers are
        # told rather than left waiting for a flusher that is gone.
        unsent = len(self._queue)
        _log.error(
            "events_not_published",
            unsent=unsent,
            timeout_s=timeout,
            hint="the publisher closed before the broker confirmed these events; they may be lost",
        )
        error: RuntimeError = (
            PublishTimeout(
                f"the publisher closed with {unsent} events unsent: the broker did not confirm "
                f"them within {timeout} s"
            )
            if timed_out is not None
            else BusClosed("the event bus closed before this event was sent")
        )
        batch, self._queue = self._queue, []
        self._fail(batch, error)
        self._settle(len(batch))
        if timed_out is not None:
            raise error

    @property
    def buffered(self) -> int:
        """Events accepted and not yet confirmed by the broker."""
        return len(self._queue)

    # -- internals --------------------------------------------------------------------------

    def _submit(self, envelopes: list[Envelope]) -> asyncio.Future[list[str]]:
        if self._closed:
            raise BusClosed("the event bus is closed; create a new EventBus to publish")
        if len(self._queue) + len(envelopes) > self.max_buffer:
            raise PublishBufferFull(
                f"publish buffer full: {len(self._queue)} events wait for the broker "
                f"(max_buffer={self.max_buffer}); it is slow or unreachable — retry later, "
                "or raise max_buffer"
            )
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), len(envelopes))
        append = self._queue.append
        topic = self.partitioning.topic
        for index, envelope in enumerate(envelopes):
            append(
                _Queued(
                    envelope.event_type,
                    topic(envelope.event_type, envelope.partition_key),
                    envelope.trace_id,
                    envelope.SerializeToString(),
                    waiter,
                    index,
                )
            )
        self._accepted += len(envelopes)
        if self._flusher is None or self._flusher.done():
            self._wakeup = asyncio.Event()
            self._progress = asyncio.Event()
            self._flusher = loop.create_task(self._flush_loop(), name="publisher-flusher")
        assert self._wakeup is not None
        self._wakeup.set()
        return waiter.future

    async def _flush_loop(self) -> None:
        assert self._wakeup is not None
        wakeup = self._wakeup
        failures = 0
        while True:
            if not self._queue:
                wakeup.clear()
                await wakeup.wait()
            # Let publishers that run in this loop iteration join the batch.
            await asyncio.sleep(self.linger_s)
            batch = self._queue[: self.max_batch]
            try:
                ids = await self._send_batch(batch)  # otel: _send_batch
            except Exception as exc:
                if not self.log.is_transient(exc):  # refused: fail these callers, go on
                    del self._queue[: len(batch)]
                    self._fail(batch, exc)
                    self._settle(len(batch))
                    continue
                self.metrics.redis_errors.inc("bus")
                delay = self.backoff.delay(failures)
                failures += 1
                _log.warning(
                    "publish_retry",
                    error=f"{type(exc).__name__}: {exc}",
                    buffered=len(self._queue),
                    attempt=failures,
                    retry_in_s=round(delay, 3),
                )
                await asyncio.sleep(delay)
                continue
            if failures:
                _log.info("publish_recovered", attempts=failures + 1)
                failures = 0
            del self._queue[: len(batch)]
            self._resolve(batch, ids)
            self._settle(len(batch))

    def _settle(self, count: int) -> None:
        self._settled += count
        if self._progress is not None:
            self._progress.set()

    async def _send(self, batch: list[_Queued]) -> list[str]:
        return await self.log.append([(item.topic, item.data) for item in batch])

    def _resolve(self, batch: list[_Queued], ids: list[str]) -> None:
        counts: dict[str, int] = {}
        for item, entry_id in zip(batch, ids, strict=True):
            waiter = item.waiter
            waiter.ids[item.index] = entry_id
            waiter.remaining -= 1
            if waiter.remaining == 0 and not waiter.future.done():
                waiter.future.set_result(waiter.ids)
            counts[item.event_type] = counts.get(item.event_type, 0) + 1
        for event_type, n in counts.items():
            self.metrics.published.labels(event_type).inc(n)

    @staticmethod
    def _fail(batch: list[_Queued], exc: Exception) -> None:
        for item in batch:
            if not item.waiter.future.done():
                item.waiter.future.set_exception(exc)
