"""How this engine classifies failures: one transient-error check for the whole adapter."""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors


class Reconnected(ConnectionError):
    """The connection to NATS dropped since this subscription positioned its consumers:
    entries in flight may be lost on the way, so it positions again from its record."""


class ConsumerGone(ConnectionError):
    """A consumer being pulled from was deleted (a successor took over, or an operator):
    the subscription positions again, which a stale owner cannot."""


class NatsAccessDenied(Exception):
    """The server refused this connection's credentials (user, password, token or nkey in
    the URL): no retry helps, the URL or the server's accounts must change."""


class PublishRefused(RuntimeError):
    """JetStream refused to store a message (its reply carried an error)."""


_TRANSIENT_NATS = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoServersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.UnexpectedEOF,
    nats.errors.FlushTimeoutError,
    nats.js.errors.ServiceUnavailableError,
)

_TRANSIENT = (*_TRANSIENT_NATS, Reconnected, ConsumerGone, asyncio.TimeoutError, TimeoutError)

# The server could not be reached or did not answer in time (for callers outside this
# package, which may catch these but not import nats: ``except NatsUnreachable``).
NatsUnreachable: tuple[type[Exception], ...] = (
    *_TRANSIENT_NATS,
    nats.errors.ConnectionClosedError,
    Reconnected,
)
# Any error nats-py raises (an APIError is JetStream's refusal of a request).
NatsError: tuple[type[Exception], ...] = (nats.errors.Error,)


def is_transient(exc: BaseException) -> bool:
    """True for what a retry after a pause can fix: the server unreachable or restarting, a
    lost reply, JetStream not answering yet (no responders, 503), a reconnect."""
    if isinstance(
        exc, (*_TRANSIENT_NATS, Reconnected, ConsumerGone, asyncio.TimeoutError, TimeoutError)
    ):
        return True
    if isinstance(exc, nats.errors.ConnectionClosedError):
        return False  # closed by us: nothing will reopen it
    if isinstance(exc, nats.js.errors.APIError):
        # 503: JetStream temporarily unavailable (starting, recovering its store).
        return exc.code == 503
    if isinstance(exc, PublishRefused):
        return False
    return isinstance(exc, OSError)
