"""One NATS connection per engine: opened lazily (an engine is built synchronously, from a
URL), reconnecting by itself, counting its outages, and publishing to JetStream pipelined.

Why the outage count (``epoch``): a pull request's entries travel to this process after the
server marked them delivered. When the connection drops, entries in flight are lost on the
way while the server believes them delivered; a subscription that sees the epoch move
positions its consumers again from its committed record instead of trusting the stream.

Why a publisher of its own instead of ``JetStreamContext.publish``: that one awaits each
acknowledgement before the next publish. Here a batch's messages all go out at once, each
with a reply subject on one inbox, and the acknowledgements are awaited together: one round
trip per batch, no task per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import nats
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, BucketNotFoundError
from nats.js.kv import KeyValue

from runtime.adapters.nats.errors import NatsAccessDenied, PublishRefused, Reconnected
from runtime.adapters.nats.names import JetStreamNames
from runtime.core.dead_letters import DLQ_MAXLEN
from runtime.core.logs import get_logger
from runtime.core.trace_index import DEFAULT_MAX_TRACES, DEFAULT_TRACE_TTL_S

_log = get_logger("runtime.adapters.nats")

MSG_ID = "Nats-Msg-Id"
# How long JetStream remembers a message id (publish dedupe): a publisher's retry after a lost
# reply, or a commit redone after a crash, lands within it and is stored once.
DEFAULT_DUPLICATE_WINDOW_S = 120.0
ACK_TIMEOUT_S = 5.0
# The trace index is bounded by age (a trace is asked about while it is fresh) and by count:
# JetStream bounds messages, not subjects, so the cap allows ~10 events per trace.
TRACE_INDEX_MAX_MSGS = DEFAULT_MAX_TRACES * 10
# JetStream API and KV calls: a reply lost to a dropped connection costs this long.
API_TIMEOUT_S = 2
# The operators' logs (audit, state repairs): each append trims its subject to the length
# its caller asks for (``operator_admin``); this bound only backs that up.
OPS_MAX_PER_SUBJECT = 100_000


class PublishItem:
    """One message to store: its subject, bytes and message id ("" for none)."""

    __slots__ = ("data", "msg_id", "subject")

    def __init__(self, subject: str, data: bytes, msg_id: str) -> None:
        self.subject = subject
        self.data = data
        self.msg_id = msg_id


class _PendingBatch:
    """The acknowledgements one batch waits for."""

    __slots__ = ("error", "future", "remaining", "seqs", "unavailable")

    def __init__(self, future: asyncio.Future[None], count: int) -> None:
        self.future = future
        self.seqs = [0] * count
        self.remaining = count
        self.error: str | None = None
        self.unavailable = False  # no responders, or JetStream answered 503: try again


class Connection:
    """The engine's NATS connection, its JetStream context and its KV bucket."""

    def __init__(
        self,
        url: str,
        names: JetStreamNames,
        *,
        duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S,
        max_per_subject: int = -1,
        name: str = "quantum",
    ) -> None:
        self.url = url
        self.max_per_subject = max_per_subject  # the events stream's (retention.py)
        self.names = names
        self.duplicate_window_s = duplicate_window_s
        self.name = name
        self.epoch = 0  # outages so far (see the module doc)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._opening = asyncio.Lock()
        self._ack_sub: NatsSubscription | None = None
        self._ack_prefix = ""
        self._acks: dict[str, tuple[_PendingBatch, int]] = {}
        self._counter = itertools.count()
        self._closed = False
        self._refused: Exception | None = None  # an authorization violation while connecting

    # -- opening ----------------------------------------------------------------------------

    async def client(self, *, ensure: bool = True) -> Client:
        """The connected client: the first call connects and (unless ``ensure`` is False)
        makes sure the streams and the bucket exist."""
        nc = self._nc
        if nc is not None and self._js is not None and (self._kv is not None or not ensure):
            return nc
        async with self._opening:
            if self._closed:
                raise nats.errors.ConnectionClosedError
            if self._nc is None:
                self._refused = None
                try:
                    self._nc = await self._connect()
                except nats.errors.NoServersError as exc:
                    if self._refused is not None:
                        raise NatsAccessDenied(
                            f"NATS at {_without_credentials(self.url)} refused this "
                            f"connection's credentials ({self._refused}): give the user and "
                            "password in the URL (nats://USER:PASSWORD@HOST:PORT) or a token"
                        ) from exc
                    raise
                self._nc.options["max_reconnect_attempts"] = -1  # connected: never give up
                self._js = self._nc.jetstream(timeout=API_TIMEOUT_S)
                self._ack_prefix = self._nc.new_inbox()
                self._ack_sub = await self._nc.subscribe(self._ack_prefix + ".*", cb=self._on_ack)
            if self._kv is None and ensure:
                await self._ensure_streams()
            return self._nc

    async def _connect(self) -> Client:
        # Two attempts at first (nats-py would otherwise retry forever inside connect): the
        # caller's backoff retries a broker that is not up yet.
        return await nats.connect(
            self.url,
            name=self.name,
            allow_reconnect=True,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            connect_timeout=2,
            ping_interval=5,
            max_outstanding_pings=2,
            disconnected_cb=self._on_disconnect,
            error_cb=self._on_error,
            pending_size=64 * 1024 * 1024,
        )

    async def jetstream(self, *, ensure: bool = True) -> JetStreamContext:
        """The JetStream context; with ``ensure`` False it creates no stream (to delete)."""
        await self.client(ensure=ensure)
        assert self._js is not None
        return self._js

    def forget_streams(self) -> None:
        """The namespace's streams and bucket were deleted: the next use creates them again."""
        self._kv = None

    async def kv(self) -> KeyValue:
        await self.client()
        assert self._kv is not None
        return self._kv

    async def _ensure_streams(self) -> None:
        js = self._js
        assert js is not None
        names = self.names
        # Events: per subject, at most what retention.py keeps below (read history, the unread
        # backlog its backpressure bounds, and a margin).
        for config in (
            StreamConfig(
                name=names.events_stream,
                subjects=[names.events_subjects],
                retention=RetentionPolicy.LIMITS,
                discard=DiscardPolicy.OLD,
                max_msgs_per_subject=self.max_per_subject,
                storage=StorageType.FILE,
                duplicate_window=self.duplicate_window_s,
            ),
            StreamConfig(
                name=names.dlq_stream,
                subjects=[names.dlq_subjects],
                retention=RetentionPolicy.LIMITS,
                discard=DiscardPolicy.OLD,
                max_msgs_per_subject=DLQ_MAXLEN,  # per domain, as on Redis
                storage=StorageType.FILE,
                duplicate_window=self.duplicate_window_s,
            ),
            StreamConfig(
                name=names.trace_stream,
                subjects=[names.trace_subjects],
                retention=RetentionPolicy.LIMITS,
                discard=DiscardPolicy.OLD,  # an index: the oldest traces go first
                max_age=float(DEFAULT_TRACE_TTL_S),
                max_msgs=TRACE_INDEX_MAX_MSGS,
                storage=StorageType.FILE,
                duplicate_window=self.duplicate_window_s,
            ),
            StreamConfig(
                name=names.ops_stream,
                subjects=[names.ops_subjects],
                retention=RetentionPolicy.LIMITS,
                discard=DiscardPolicy.OLD,
                max_msgs_per_subject=OPS_MAX_PER_SUBJECT,
                storage=StorageType.FILE,
                duplicate_window=self.duplicate_window_s,
            ),
        ):
            try:
                await js.add_stream(config)
            except BadRequestError as exc:
                if exc.err_code != 10058:  # "stream name already in use" (another config)
                    raise
        try:
            self._kv = await js.key_value(names.bucket)
        except BucketNotFoundError:
            self._kv = await js.create_key_value(
                bucket=names.bucket, history=1, storage=StorageType.FILE
            )

    async def _on_disconnect(self) -> None:
        self.epoch += 1
        # Acknowledgements still awaited went down with the connection: their batches fail
        # now (and are published again, deduped) instead of waiting out the timeout.
        for batch, _ in list(self._acks.values()):
            if not batch.future.done():
                batch.future.set_exception(
                    Reconnected("the connection to NATS dropped while publishing")
                )

    async def _on_error(self, exc: Exception) -> None:
        # nats-py reports the server's "-ERR 'Authorization Violation'" as a plain Error.
        if (
            isinstance(exc, nats.errors.AuthorizationError)
            or "authorization violation" in str(exc).lower()
        ):
            self._refused = exc
        _log.debug("nats_connection_error", error=f"{type(exc).__name__}: {exc}")

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, items: Sequence[PublishItem]) -> list[int]:
        """Store ``items`` in order; return their stream sequences (a message id JetStream
        already holds answers with the original's sequence: stored once)."""
        if not items:
            return []
        nc = await self.client()
        loop = asyncio.get_running_loop()
        batch = _PendingBatch(loop.create_future(), len(items))
        acks = self._acks
        prefix = self._ack_prefix
        replies: list[str] = []
        try:
            for index, item in enumerate(items):
                reply = f"{prefix}.{next(self._counter)}"
                replies.append(reply)
                acks[reply] = (batch, index)
                await nc.publish(
                    item.subject,
                    item.data,
                    reply=reply,
                    headers={MSG_ID: item.msg_id} if item.msg_id else None,
                )
            async with asyncio.timeout(ACK_TIMEOUT_S):
                await batch.future
        except TimeoutError:
            raise nats.errors.TimeoutError from None
        finally:
            for reply in replies:
                acks.pop(reply, None)
        if batch.unavailable:
            raise nats.errors.NoRespondersError
        if batch.error is not None:
            raise PublishRefused(batch.error)
        return batch.seqs

    async def _on_ack(self, msg: Msg) -> None:
        found = self._acks.pop(msg.subject, None)
        if found is None:
            return  # the batch gave up waiting (timed out): it is published again
        batch, index = found
        if msg.headers and msg.headers.get("Status") == "503":
            batch.unavailable = True
        else:
            try:
                reply = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                reply = {"error": {"description": msg.data[:200].decode("utf-8", "replace")}}
            error = reply.get("error")
            if error is not None:
                if error.get("code") == 503:
                    batch.unavailable = True
                batch.error = batch.error or str(error.get("description", error))
            else:
                batch.seqs[index] = int(reply["seq"])
        batch.remaining -= 1
        if batch.remaining == 0 and not batch.future.done():
            batch.future.set_result(None)

    # -- closing ----------------------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        nc, self._nc = self._nc, None
        self._js = self._kv = None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()


def _without_credentials(url: str) -> str:
    """``url`` with any user, password or token taken out (for messages and logs)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
