"""Retention that never drops an unread event, and backpressure instead of loss.

A stream keeps its newest ``retain`` entries as history (for replays and ReadEvents) and,
beyond that, every entry some consumer group still has to read or acknowledge. It is trimmed
(``XTRIM MAXLEN ~``) only down to that; appending is never what trims it.

How many entries a group still needs is ``lag + pending`` (Redis 7's XINFO GROUPS): ``lag``
counts entries not yet delivered to the group, ``pending`` those delivered and not
acknowledged. That count is exact because a delivery loop acknowledges whole batches in
order, so its pending entries are always the newest ones it was given (a contiguous tail):
the oldest entry a group needs is ``lag + pending`` from the end.

The length ceiling (``ceiling``, the bus's ``maxlen``) bounds that unread backlog: when the
slowest group of a stream is ``ceiling`` entries behind, appends to it wait (polling the
groups' positions), so a feed slows to what its consumers take — and past
``backpressure_timeout_s`` the append fails with ``Backpressure``, which names the stream and
the group holding it. A group that has not moved for ``stuck_after_s`` while behind is
reported (log line, metric) and no longer holds the stream: an abandoned group must not stop
the system.

The positions are read per stream at most every ``refresh_s`` (one XINFO GROUPS and one
XLEN), on the append path of whoever appends: never per event. Trimming in steps there leaves a
stream longer than its history after a burst; ``settle``, when the process that appended stops,
trims each of its streams by the same rule, measured then, so a stream at rest holds its
history and what some group still needs, not what the last burst left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from runtime.core.logs import get_logger
from runtime.core.metrics import RuntimeMetrics, runtime_metrics
from runtime.core.transport import Backpressure

_log = get_logger("runtime.adapters.redis.retention")

DEFAULT_RETAIN = 10_000
DEFAULT_BACKPRESSURE_TIMEOUT_S = 60.0
DEFAULT_STUCK_AFTER_S = 600.0
SETTLE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long streams are and how long an append may wait for room."""

    retain: int = DEFAULT_RETAIN
    refresh_s: float = 0.2
    backpressure_timeout_s: float = DEFAULT_BACKPRESSURE_TIMEOUT_S
    stuck_after_s: float = DEFAULT_STUCK_AFTER_S

    def __post_init__(self) -> None:
        if self.retain < 1:
            raise ValueError(f"retain must be at least 1 entry; got {self.retain}")
        if self.refresh_s <= 0 or self.backpressure_timeout_s <= 0 or self.stuck_after_s <= 0:
            raise ValueError("refresh_s, backpressure_timeout_s and stuck_after_s must be > 0")


@dataclass(slots=True)
class _GroupWatch:
    entries_read: int | None = None
    moved_at: float = field(default_factory=time.monotonic)
    stuck: bool = False


@dataclass(slots=True)
class _StreamState:
    backlog: int = 0  # entries the slowest (not stuck) group still needs
    appended: int = 0  # entries this process appended since that was measured
    holder: str = ""  # that group
    length: int = 0
    checked_at: float = -1.0
    groups: dict[str, _GroupWatch] = field(default_factory=dict)


class StreamRetention:
    """Trims and meters the streams one process appends to."""

    def __init__(
        self,
        redis: aioredis.Redis,
        policy: RetentionPolicy | None = None,
        *,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        self.redis = redis
        self.policy = policy or RetentionPolicy()
        self.metrics = metrics or runtime_metrics()
        self._streams: dict[str, _StreamState] = {}
        self.waited_s = 0.0  # total time appends waited for room (reported by benchmarks)

    async def make_room(self, appends: Iterable[tuple[str, int, int]]) -> None:
        """Return when every stream named has room below its ceiling for the entries about to
        be appended (stream, ceiling, count); trims on the way. What this process appended
        since the last measurement counts as unread, so one publisher cannot overshoot.

        Raises ``Backpressure`` when one stays full past the policy's timeout.
        """
        deadline: float | None = None
        wanted = {stream: (ceiling, count) for stream, ceiling, count in appends}
        pending = [(s, c) for s, (c, _) in wanted.items()]
        while pending:
            await self._refresh([s for s, _ in pending])
            streams = self._streams
            full = [(s, c) for s, c in pending if streams[s].backlog + streams[s].appended >= c]
            if not full:
                for stream, (_, count) in wanted.items():
                    streams[stream].appended += count
                return
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.policy.backpressure_timeout_s
                stream, ceiling = full[0]
                state = self._streams[stream]
                self.metrics.backpressure_waits.labels(stream).inc()
                _log.info(
                    "backpressure",
                    stream=stream,
                    backlog=state.backlog,
                    ceiling=ceiling,
                    group=state.holder,
                    hint="the slowest consumer group is a full ceiling behind: appends wait",
                )
            elif now >= deadline:
                stream, ceiling = full[0]
                state = self._streams[stream]
                raise Backpressure(
                    f"{stream} has {state.backlog} entries its consumer group "
                    f"{state.holder!r} has not read or acknowledged (ceiling {ceiling}); waited "
                    f"{self.policy.backpressure_timeout_s:.0f} s for room. Start or speed up "
                    "that domain, or raise the stream's length limit"
                )
            started = time.monotonic()
            await asyncio.sleep(self.policy.refresh_s)
            self.waited_s += time.monotonic() - started
            pending = full

    def backlog(self, stream: str) -> int:
        """The last measured backlog of ``stream`` (0 before the first measurement)."""
        state = self._streams.get(stream)
        return state.backlog if state is not None else 0

    async def settle(self, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """At stop: trim every stream this process appended to down to ``retain`` entries,
        never below what a group has still to read or acknowledge (the append path's rule,
        measured now). Best effort: a broker that does not answer within ``timeout_s`` keeps
        its streams as they are, and the next append there trims them."""
        streams = list(self._streams)
        if not streams:
            return
        try:
            await asyncio.wait_for(self._refresh(streams, settle=True), timeout_s)
        except Exception as exc:  # at stop, whatever went wrong: the next append trims
            _log.info("retention_not_settled", streams=len(streams), reason=repr(exc))

    async def _refresh(self, streams: list[str], *, settle: bool = False) -> None:
        now = time.monotonic()
        stale = [
            s
            for s in streams
            if settle
            or now - self._streams.setdefault(s, _StreamState()).checked_at >= self.policy.refresh_s
        ]
        if not stale:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in stale:
                pipe.xinfo_groups(stream)
                pipe.xlen(stream)
            replies = await pipe.execute(raise_on_error=False)
        trims: list[tuple[str, int]] = []
        for index, stream in enumerate(stale):
            groups, length = replies[2 * index], replies[2 * index + 1]
            if isinstance(groups, Exception):  # no such stream yet
                groups = []
            if isinstance(length, Exception):
                length = 0
            state = self._streams[stream]
            state.checked_at = now
            state.appended = 0
            state.length = int(length)
            self._measure(stream, state, groups, int(length), now)
            keep = max(self.policy.retain, state.backlog)
            # Trim in steps, not per entry (a settle trims whatever is over).
            if state.length > keep + (0 if settle else max(100, keep // 10)):
                trims.append((stream, keep))
        if trims:
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream, keep in trims:
                    pipe.xtrim(stream, maxlen=keep, approximate=True)
                await pipe.execute(raise_on_error=False)

    def _measure(
        self, stream: str, state: _StreamState, groups: list[Any], length: int, now: float
    ) -> None:
        backlog, holder = 0, ""
        seen: set[str] = set()
        for info in groups:
            name = info["name"].decode() if isinstance(info["name"], bytes) else str(info["name"])
            seen.add(name)
            lag = info.get("lag")
            # Unknown lag (Redis cannot tell after deletions): assume the whole stream.
            needed = (length if lag is None else int(lag)) + int(info.get("pending") or 0)
            watch = state.groups.setdefault(name, _GroupWatch())
            read = info.get("entries-read")
            if read != watch.entries_read or needed == 0:
                watch.entries_read = read
                watch.moved_at = now
                if watch.stuck:
                    watch.stuck = False
                    _log.info("consumer_group_moving_again", stream=stream, group=name)
            elif not watch.stuck and now - watch.moved_at >= self.policy.stuck_after_s:
                watch.stuck = True
                _log.warning(
                    "consumer_group_stuck",
                    stream=stream,
                    group=name,
                    backlog=needed,
                    still_for_s=round(now - watch.moved_at),
                    hint="it no longer holds the stream back: entries it has not read may be "
                    "trimmed. Restart its domain, or delete the group if it is gone for good",
                )
            self.metrics.group_stuck.labels(name, stream).set(1.0 if watch.stuck else 0.0)
            if not watch.stuck and needed > backlog:
                backlog, holder = needed, name
        for gone in set(state.groups) - seen:
            del state.groups[gone]
        state.backlog, state.holder = backlog, holder
