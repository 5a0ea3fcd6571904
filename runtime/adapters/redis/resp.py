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
    __slots__ = ("future", "remaining", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self.future = future
        self.remaining = count
        self.replies: list[Any] = []


class _RespProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[_Pending] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

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
        assert protocol.transport is not None
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        protocol.waiting.append(_Pending(future, replies))
        protocol.transport.write(packed)
        try:
            return await asyncio.wait_for(future, timeout_s or self.timeout_s)
        except TimeoutError:
            # Later replies would be matched to the wrong callers: start over.
            self._drop(protocol)
            raise TimeoutError(
                f"Redis at {self._where()} did not answer within {timeout_s or self.timeout_s} s"
            ) from None
        except asyncio.CancelledError:
            if not future.done():  # its reply would be taken by the next caller
                self._drop(protocol)
            raise

    async def close(self) -> None:
        if self._protocol is not None:
            self._drop(self._protocol)

    def _drop(self, protocol: _RespProtocol) -> None:
        if protocol.transport is not None:
            protocol.transport.abort()
        protocol.connection_lost(None)
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
            try:
                async with asyncio.timeout(e.connect_timeout_s):
                    if e.path:
                        _, protocol = await loop.create_unix_connection(_RespProtocol, e.path)
                    else:
                        _, protocol = await loop.create_connection(
                            _RespProtocol, e.host, e.port, ssl=e.ssl_context
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
