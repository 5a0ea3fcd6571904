"""Ending a server stream whose reader has stopped reading.

A server-streaming handler hands each message to grpc and is resumed once grpc has written
it; when the client stops reading, its flow-control window fills and that write never
completes, so the handler (and its subscription) would stay blocked for as long as the
connection lives. ``StalledWriteGuard`` times every hand-over and cancels the handler when one
takes longer than the grace period, the same bound SubscribeTraces gives a cut-off reader.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from runtime.core.logs import get_logger

log = get_logger("control_plane.stalled_writes")

STALLED_WRITE_GRACE_S = 5.0


class StalledWriteGuard:
    """``with guard: yield message`` — cancels the current task if the yield outlasts
    ``grace_s`` (the client has stopped reading)."""

    def __init__(self, method: str, grace_s: float = STALLED_WRITE_GRACE_S) -> None:
        self._method = method
        self._grace_s = grace_s
        self._task = asyncio.current_task()
        self._timer: asyncio.TimerHandle | None = None
        self.fired = False

    def __enter__(self) -> StalledWriteGuard:
        if self._task is not None:
            self._timer = asyncio.get_running_loop().call_later(self._grace_s, self._fire)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self.fired = True
        log.warning("stream_reader_stalled_cut_off", method=self._method, grace_s=self._grace_s)
        if self._task is not None and not self._task.done():
            self._task.cancel()
