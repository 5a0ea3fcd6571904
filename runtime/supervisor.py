"""Supervising the worker processes of ``quantum run --workers N``.

Each worker is a child process (``quantum run --domains ... --supervised``) hosting one group
of domains. The supervisor starts them, restarts one that exits unexpectedly (after a capped,
jittered backoff, with a log line saying what died and how), and on stop asks them to stop one
at a time, in flow order: a worker is sent SIGTERM, drains what it holds and exits before the
next one is asked, so everything upstream has stopped before a worker finishes its backlog.

Children run in a session of their own, so a Ctrl-C in the terminal reaches only the
supervisor, which decides the order. Each child's stdin is a pipe that the supervisor never
writes: should the supervisor die without stopping them (SIGKILL), the pipe closes and every
child stops by itself. Only the supervisor's own children are ever signalled, by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from runtime.core.backoff import Backoff
from runtime.core.logs import get_logger

_log = get_logger("runtime.supervisor")

POLL_S = 0.1


class WorkerState(enum.Enum):
    RUNNING = "running"
    RESTART_PENDING = "restart_pending"  # exited unexpectedly; starts again at restart_at
    STOPPING = "stopping"  # sent SIGTERM, draining
    FINISHED = "finished"  # ended the run by itself (its feed ran out)
    STOPPED = "stopped"


@dataclass
class Worker:
    """One child process and its history."""

    index: int
    domains: tuple[str, ...]
    state: WorkerState = WorkerState.STOPPED
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    starts: int = 0
    quick_failures: int = 0  # consecutive exits soon after a start
    restart_at: float = 0.0

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


CommandFor = Callable[[Worker], Awaitable[list[str]]]


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Starts, watches, restarts and stops the workers of one run.

    ``command`` builds a worker's command line at each start (a restarted feed resumes where
    it stopped, so its arguments change). ``ends_run`` tells which worker finishing by itself
    (exit code 0, unasked) ends the run: the one that hosts the feed.
    """

    def __init__(
        self,
        groups: Sequence[tuple[str, ...]],
        command: CommandFor,
        *,
        ends_run: Callable[[Worker], bool],
        backoff: Backoff | None = None,
        stop_timeout_s: float = 60.0,
        quick_exit_s: float = 10.0,
        max_quick_failures: int = 5,
    ) -> None:
        if not groups:
            raise ValueError("a supervisor needs at least one group of domains")
        self.workers = [Worker(index, tuple(group)) for index, group in enumerate(groups)]
        self._command = command
        self._ends_run = ends_run
        self._backoff = backoff or Backoff(base_s=0.5, cap_s=10.0)
        self._stop_timeout_s = stop_timeout_s
        self._quick_exit_s = quick_exit_s
        self._max_quick_failures = max_quick_failures
        self.gave_up: Worker | None = None

    async def run(self, stop: asyncio.Event) -> int:
        """Run every worker until ``stop`` is set, the feed's worker finishes or a worker
        keeps failing at start; then stop them all in order. 0 when all stopped cleanly."""
        try:
            for worker in self.workers:
                await self._start(worker)
            while not stop.is_set():
                if await self._tend(self.workers):
                    break
                await _wait(stop, POLL_S)
        finally:
            clean = await self._stop_all()
        return 0 if clean and self.gave_up is None else 1

    async def _start(self, worker: Worker) -> None:
        worker.process = _spawn(await self._command(worker))
        worker.started_at = time.monotonic()
        worker.starts += 1
        worker.state = WorkerState.RUNNING
        _log.info(
            "worker_started",
            worker=worker.index,
            pid=worker.pid,
            domains=list(worker.domains),
            restarts=worker.starts - 1,
        )

    async def _tend(self, workers: Sequence[Worker]) -> bool:
        """Notice exits and start due restarts; True when the run should end."""
        now = time.monotonic()
        for worker in workers:
            if worker.state is WorkerState.RESTART_PENDING and now >= worker.restart_at:
                await self._start(worker)
                continue
            if worker.state is not WorkerState.RUNNING or worker.process is None:
                continue
            code = worker.process.poll()
            if code is None:
                continue
            if code == 0 and self._ends_run(worker):
                worker.state = WorkerState.FINISHED
                _log.info("worker_finished", worker=worker.index, domains=list(worker.domains))
                return True
            if self._schedule_restart(worker, code, now):
                return True
        return False

    def _schedule_restart(self, worker: Worker, code: int, now: float) -> bool:
        """Plan the restart of a worker that exited unasked; True when giving up on it."""
        lived = now - worker.started_at
        worker.quick_failures = worker.quick_failures + 1 if lived < self._quick_exit_s else 0
        if worker.quick_failures >= self._max_quick_failures:
            worker.state = WorkerState.STOPPED
            self.gave_up = worker
            _log.error(
                "worker_keeps_failing",
                worker=worker.index,
                domains=list(worker.domains),
                exit=_describe_exit(code),
                failures=worker.quick_failures,
                hint="its log lines above say why; the run stops",
            )
            return True
        delay = self._backoff.delay(worker.quick_failures)
        worker.state = WorkerState.RESTART_PENDING
        worker.restart_at = now + delay
        _log.warning(
            "worker_exited_restarting",
            worker=worker.index,
            pid=worker.pid,
            domains=list(worker.domains),
            exit=_describe_exit(code),
            lived_s=round(lived, 1),
            restart_in_s=round(delay, 2),
        )
        return False

    async def _stop_all(self) -> bool:
        """Stop the workers one at a time, in flow order; False when one had to be killed
        or did not exit cleanly."""
        clean = True
        for position, worker in enumerate(self.workers):
            if worker.state is WorkerState.RUNNING and worker.process is not None:
                worker.state = WorkerState.STOPPING
                worker.process.send_signal(signal.SIGTERM)
                clean = await self._await_exit(worker, self.workers[position + 1 :]) and clean
            elif worker.state is WorkerState.RESTART_PENDING:
                worker.state = WorkerState.STOPPED
            if worker.process is not None and worker.process.stdin is not None:
                worker.process.stdin.close()
        return clean

    async def _await_exit(self, worker: Worker, downstream: Sequence[Worker]) -> bool:
        """Wait for a stopping worker; meanwhile keep the ones after it running (they still
        have its last outputs to handle). Kill it at the stop timeout."""
        assert worker.process is not None
        deadline = time.monotonic() + self._stop_timeout_s
        while (code := worker.process.poll()) is None:
            if time.monotonic() >= deadline:
                _log.error(
                    "worker_stop_timeout",
                    worker=worker.index,
                    pid=worker.pid,
                    seconds=self._stop_timeout_s,
                    action="killed",
                )
                worker.process.kill()
                worker.process.wait()
                worker.state = WorkerState.STOPPED
                return False
            if self.gave_up is None:
                await self._tend(downstream)
            await asyncio.sleep(POLL_S)
        worker.state = WorkerState.STOPPED
        if code != 0:
            _log.error("worker_stopped_uncleanly", worker=worker.index, exit=_describe_exit(code))
            return False
        _log.info("worker_stopped", worker=worker.index, domains=list(worker.domains))
        return True


def _spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    """Start a child (a fork and exec: about a millisecond, so not worth a thread)."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,  # never written: closes when the supervisor dies
        stdout=subprocess.DEVNULL,  # a worker prints no summary; its logs go to stderr
        start_new_session=True,  # Ctrl-C in the terminal reaches the supervisor only
    )


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)
