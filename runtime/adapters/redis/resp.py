"""A lean Redis connection for the hot path: hiredis packing and parsing, pipelined, one
future per pipeline.

redis-py spends several microseconds of Python per command building and parsing it; the hot
path (XADD of outputs, XREADGROUP, SMISMEMBER, one MULTI/EXEC per batch) sends hundreds of
commands per round trip, so that cost dominates. Here a pipeline is packed by
``hiredis.pack_command`` (C), written in one ``write``, and its replies are parsed by
``hiredis.Reader`` (C) as they arrive, straight into the waiting pipeline's list.

Replies arrive in request order on one connection, so a FIFO of waiting pipelines is all the
bookkeeping needed. Error replies come back as values (``ReplyError``) inside a pipeline's
result; ``call`` raises them as redis-py's ``ResponseError`` so the one transient-error rule
(``runtime.adapters.redis.errors``) applies. A lost connection fails every waiting pipeline
with ``ConnectionError`` and the next call connects again; a reply that takes longer than the
command timeout closes the connection (the stream of replies can no longer be trusted).

The timeouts are kept by one timer per connection, not one ``asyncio.wait_for`` per call
(which costs a timer, a callback and a wrapper future each time, about half of a call's
Python): each waiting pipeline notes its deadline, and the timer, armed for the earliest one,
fails the late pipelines with ``TimeoutError`` when it fires, then waits for the next deadline.

redis-py stays for administration (groups, claims, scripts, the control plane).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ResponseError

Command = Sequence[Any]
DEFAULT_TIMEOUT_S = 10.0


def pack(*args: Any) -> bytes:
    """One command in the Redis protocol, packed by hiredis (C)."""
    return cast(bytes, hiredis.pack_command(args))


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect: taken from a redis-py client, so one URL configures both."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str = ""  # a unix socket, instead of host and port
    username: str | None = None
    password: str | None = None
    db: int = 0
    ssl_context: ssl.SSLContext | None = None
    connect_timeout_s: float = 5.0

    @classmethod
    def of(cls, client: aioredis.Redis) -> Endpoint:
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        context: ssl.SSLContext | None = None
        if issubclass(pool.connection_class, SSLConnection):
            context = ssl.create_default_context(cafile=kwargs.get("ssl_ca_certs"))
            if kwargs.get("ssl_certfile"):
                context.load_cert_chain(kwargs["ssl_certfile"], kwargs.get("ssl_keyfile"))
            if kwargs.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        path = ""
        if issubclass(pool.connection_class, UnixDomainSocketConnection):
            path = str(kwargs.get("path", ""))
        return cls(
            host=str(kwargs.get("host", "127.0.0.1")),
            port=int(kwargs.get("port", 6379)),
            path=path,
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            db=int(kwargs.get("db", 0) or 0),
            ssl_context=context,
            connect_timeout_s=float(kwargs.get("socket_connect_timeout") or 5.0),
        )


class _Pending:
    __slots__ = ("deadline", "future", "remaining", "replies", "timeout_s")

    def __init__(
        self, future: asyncio.Future[list[Any]], count: int, timeout_s: float, deadline: float
    ) -> None:
        self.future = future
        self.remaining = count
        self.replies: list[Any] = []
        self.timeout_s = timeout_s
        self.deadline = deadline  # on the event loop's clock


class _RespProtocol(asyncio.Protocol):
    def __init__(self, where: str) -> None:
        self.where = where
        self.reader = hiredis.Reader()
        self.waiting: deque[_Pending] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        self._loop = asyncio.get_running_loop()
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, packed: bytes, replies: int, timeout_s: float) -> asyncio.Future[list[Any]]:
        """Write packed commands; the future of their ``replies`` replies, failed with
        ``TimeoutError`` when they are not all in within ``timeout_s``."""
        loop = self._loop
        future: asyncio.Future[list[Any]] = loop.create_future()
        deadline = loop.time() + timeout_s
        self.waiting.append(_Pending(future, replies, timeout_s, deadline))
        watchdog = self._watchdog
        # Deadlines mostly grow: the timer armed for an earlier one stays (no timer per call).
        if watchdog is None or deadline < watchdog.when():
            if watchdog is not None:
                watchdog.cancel()
            self._watchdog = loop.call_at(deadline, self._check_deadlines)
        assert self.transport is not None
        self.transport.write(packed)
        return future

    def _check_deadlines(self) -> None:
        self._watchdog = None
        if not self.waiting:
            return
        now = self._loop.time()
        late = [p for p in self.waiting if p.deadline <= now]
        if not late:
            earliest = min(p.deadline for p in self.waiting)
            self._watchdog = self._loop.call_at(earliest, self._check_deadlines)
            return
        for pending in late:
            if not pending.future.done():
                pending.future.set_exception(
                    TimeoutError(
                        f"Redis at {self.where} did not answer within {pending.timeout_s} s"
                    )
                )
        # Later replies would be matched to the wrong callers: start over.
        self.abort()

    def abort(self) -> None:
        """Close the connection now; every waiting pipeline fails with ``ConnectionError``."""
        if self.transport is not None:
            self.transport.abort()
        self.connection_lost(None)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiting = self.waiting
        while waiting:
            reply = reader.gets()
            if reply is False:
                return
            head = waiting[0]
            head.replies.append(reply)
            head.remaining -= 1
            if head.remaining == 0:
                waiting.popleft()
                if not head.future.done():
                    head.future.set_result(head.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("Redis closed the connection")
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        error = ConnectionError(f"connection to Redis lost: {self.lost}")
        while self.waiting:
            pending = self.waiting.popleft()
            if not pending.future.done():
                pending.future.set_exception(error)


class RespConnection:
    """One connection; ``pipeline`` sends many commands and returns their replies in order."""

    def __init__(self, endpoint: Endpoint, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._protocol: _RespProtocol | None = None
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def of(cls, client: aioredis.Redis, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> RespConnection:
        return cls(Endpoint.of(client), timeout_s=timeout_s)

    async def pipeline(
        self, commands: Sequence[Command], *, timeout_s: float | None = None
    ) -> list[Any]:
        """Send ``commands`` in one write; their replies, errors as ``ReplyError`` values."""
        if not commands:
            return []
        return await self.send_packed(
            b"".join([pack(*c) for c in commands]),
            len(commands),
            timeout_s=timeout_s,
        )

    async def call(self, *command: Any, timeout_s: float | None = None) -> Any:
        """Send one command; an error reply is raised as ``ResponseError``."""
        (reply,) = await self.send_packed(pack(*command), 1, timeout_s=timeout_s)
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    async def send_packed(
        self, packed: bytes, replies: int, *, timeout_s: float | None = None
    ) -> list[Any]:
        """Send already packed commands; wait for ``replies`` replies."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None or protocol.transport is None:
            protocol = await self._connect()
        future = protocol.send(packed, replies, timeout_s or self.timeout_s)
        try:
            return await future
        except asyncio.CancelledError:
            if not future.done():  # its reply would be taken by the next caller
                self._drop(protocol)
            raise

    async def close(self) -> None:
        if self._protocol is not None:
            self._drop(self._protocol)

    def _drop(self, protocol: _RespProtocol) -> None:
        protocol.abort()
        if self._protocol is protocol:
            self._protocol = None

    def _where(self) -> str:
        e = self.endpoint
        return e.path or f"{e.host}:{e.port}"

    async def _connect(self) -> _RespProtocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            current = self._protocol
            if current is not None and current.lost is None and current.transport is not None:
                return current
            e = self.endpoint
            loop = asyncio.get_running_loop()
            where = self._where()
            try:
                async with asyncio.timeout(e.connect_timeout_s):
                    if e.path:
                        _, protocol = await loop.create_unix_connection(
                            lambda: _RespProtocol(where), e.path
                        )
                    else:
                        _, protocol = await loop.create_connection(
                            lambda: _RespProtocol(where), e.host, e.port, ssl=e.ssl_context
                        )
            except TimeoutError:
                raise TimeoutError(f"connecting to Redis at {self._where()} timed out") from None
            except OSError as exc:
                raise ConnectionError(f"cannot connect to Redis at {self._where()}: {exc}") from exc
            self._protocol = protocol
            hello: list[Command] = []
            if e.password is not None:
                hello.append(
                    ("AUTH", e.username, e.password) if e.username else ("AUTH", e.password)
                )
            if e.db:
                hello.append(("SELECT", e.db))
            if hello:
                for reply in await self.pipeline(hello):
                    if isinstance(reply, hiredis.ReplyError):
                        self._drop(protocol)
                        raise ResponseError(str(reply))
            return protocol
