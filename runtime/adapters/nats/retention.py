"""Retention that never drops an unread event, and backpressure instead of loss (the Redis
engine's ``retention`` module, in JetStream's terms).

JetStream trims by itself, per subject, to ``max_msgs_per_subject`` (the oldest go), whether
they were read or not. So the limit is set above what the unread backlog can reach, and
appends are held back before it gets there:

- the events stream keeps at most ``retain + ceiling + overshoot`` entries per subject
  (``RetentionPolicy.per_subject``): read history, plus the unread backlog, plus what
  appends already under way may add past the ceiling before they see it;
- whoever appends to a subject, at most every ``refresh_s`` per subject, reads the positions
  of every consumer filtering it (one listing of the stream's consumers, shared by all its
  subjects): what each still needs is ``num_pending + num_ack_pending``; when some consumer
  needs ``ceiling`` entries or more, the append waits (re-reading the positions), and past
  ``backpressure_timeout_s`` fails with ``Backpressure``, naming the consumer and its group.

So the oldest entry of a full subject is one every group has read, as long as appends in
flight at once add fewer than ``overshoot`` entries to one subject (a publisher's batch is
at most ``publisher.DEFAULT_MAX_BATCH``). Consumers are per positioning (``subscription``);
a group's placeholder, or the consumer a dead owner left, holds the subject until its owner
positions, as a group that has not read must.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

from nats.js.api import AckPolicy, ConsumerInfo

from runtime.adapters.nats.connection import Connection
from runtime.core.logs import get_logger
from runtime.core.transport import Backpressure

_log = get_logger("runtime.adapters.nats.retention")

DEFAULT_RETAIN = 10_000
DEFAULT_CEILING = 1_000_000
DEFAULT_BACKPRESSURE_TIMEOUT_S = 60.0
DEFAULT_OVERSHOOT = 50_000


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How much read history a subject keeps and how far behind a consumer may fall."""

    retain: int = DEFAULT_RETAIN
    ceiling: int = DEFAULT_CEILING
    overshoot: int = DEFAULT_OVERSHOOT
    refresh_s: float = 0.5
    backpressure_timeout_s: float = DEFAULT_BACKPRESSURE_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.retain < 1 or self.ceiling < 1 or self.overshoot < 1:
            raise ValueError("retain, ceiling and overshoot must be at least 1 entry")
        if self.refresh_s <= 0 or self.backpressure_timeout_s <= 0:
            raise ValueError("refresh_s and backpressure_timeout_s must be > 0")

    @property
    def per_subject(self) -> int:
        """The events stream's ``max_msgs_per_subject``."""
        return self.retain + self.ceiling + self.overshoot


class _Position:
    """What one consumer of a subject still needs."""

    __slots__ = ("backlog", "name")

    def __init__(self, name: str, backlog: int) -> None:
        self.name = name
        self.backlog = backlog


class SubjectRetention:
    """Holds appends back while a subject's slowest consumer is far behind (module doc)."""

    def __init__(self, connection: Connection, policy: RetentionPolicy | None = None) -> None:
        self.connection = connection
        self.policy = policy or RetentionPolicy()
        self._checked: dict[str, float] = {}  # subject -> when it was last looked at
        self._listing: dict[str, list[_Position]] = {}
        self._listed_at = 0.0
        self._lock = asyncio.Lock()

    async def make_room(self, subjects: Iterable[str]) -> None:
        """Return when every subject has room for more; ``Backpressure`` past the timeout."""
        now = time.monotonic()
        due = [s for s in set(subjects) if now - self._checked.get(s, 0.0) >= self.policy.refresh_s]
        if not due:
            return
        deadline = now + self.policy.backpressure_timeout_s
        for subject in due:
            while True:
                positions = await self._positions(subject)
                slowest = max(positions, key=lambda p: p.backlog, default=None)
                if slowest is None or slowest.backlog < self.policy.ceiling:
                    self._checked[subject] = time.monotonic()
                    break
                if time.monotonic() >= deadline:
                    raise Backpressure(
                        f"{subject} is full: {slowest.name} still needs {slowest.backlog} "
                        f"entries (ceiling {self.policy.ceiling}); waited "
                        f"{self.policy.backpressure_timeout_s:g} s — that consumer is slow or "
                        "stopped: start it, or delete its group if it is abandoned"
                    )
                _log.info("append_waiting_for_room", subject=subject, consumer=slowest.name)
                await asyncio.sleep(self.policy.refresh_s)

    async def _positions(self, subject: str) -> list[_Position]:
        async with self._lock:
            if time.monotonic() - self._listed_at >= self.policy.refresh_s / 2:
                self._listing = await self._list()
                self._listed_at = time.monotonic()
            return self._listing.get(subject, [])

    async def _list(self) -> dict[str, list[_Position]]:
        js = await self.connection.jetstream()
        stream = self.connection.names.events_stream
        found: dict[str, list[_Position]] = {}
        offset = 0
        while True:
            page = await js.consumers_info(stream, offset=offset)
            for info in page:
                subject = info.config.filter_subject
                if subject and info.config.ack_policy != AckPolicy.NONE:  # not a mere read
                    found.setdefault(subject, []).append(_position_of(info))
            if len(page) < 256:
                return found
            offset += len(page)


def _position_of(info: ConsumerInfo) -> _Position:
    """A consumer's backlog: entries not delivered yet, or delivered and not acknowledged."""
    backlog = (info.num_pending or 0) + (info.num_ack_pending or 0)
    description = info.config.description
    return _Position(f"consumer {info.name} ({description})" if description else info.name, backlog)
