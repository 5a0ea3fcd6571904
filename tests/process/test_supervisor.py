"""The supervisor's promises, with stand-in children (small Python programs): restart what
dies, give up on what cannot start, stop in order and kill what will not stop."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from runtime.core.backoff import Backoff
from runtime.supervisor import Supervisor, Worker

FAST = Backoff(base_s=0.01, cap_s=0.02)

# Sleeps until SIGTERM (the default action ends it), writing its own stop order to a file.
OBEDIENT = """
import signal, sys, time
def stop(*_):
    with open(sys.argv[1], "a") as f:
        f.write(sys.argv[2] + "\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
time.sleep(60)
"""


def _python(*code_and_args: str) -> list[str]:
    return [sys.executable, "-c", *code_and_args]


async def test_a_worker_that_dies_is_restarted_and_all_stop_in_flow_order(tmp_path: Path) -> None:
    order = tmp_path / "order"
    restarted = asyncio.Event()

    async def command(worker: Worker) -> list[str]:
        if worker.index == 1 and worker.starts == 0:
            return _python("import sys; sys.exit(3)")  # its first life ends at once
        if worker.index == 1:
            restarted.set()
        return _python(OBEDIENT, str(order), str(worker.index))

    supervisor = Supervisor(
        [("a",), ("b",), ("c",)], command, ends_run=lambda w: False, backoff=FAST
    )
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))
    await asyncio.wait_for(restarted.wait(), 30)
    await asyncio.sleep(0.5)  # the children install their handlers
    stop.set()
    assert await asyncio.wait_for(running, 30) == 0
    assert order.read_text().split() == ["0", "1", "2"]


async def test_a_worker_that_keeps_failing_at_start_ends_the_run_with_1() -> None:
    async def command(worker: Worker) -> list[str]:
        return (
            _python("import sys; sys.exit(2)")
            if worker.index == 0
            else _python(OBEDIENT, "/dev/null", "x")
        )

    supervisor = Supervisor(
        [("a",), ("b",)], command, ends_run=lambda w: False, backoff=FAST, max_quick_failures=3
    )
    code = await asyncio.wait_for(supervisor.run(asyncio.Event()), 30)
    assert code == 1
    assert supervisor.gave_up is supervisor.workers[0]
    assert supervisor.workers[0].starts == 3


async def test_the_feed_worker_finishing_ends_the_run_cleanly(tmp_path: Path) -> None:
    async def command(worker: Worker) -> list[str]:
        if worker.index == 0:
            return _python("import time; time.sleep(0.3)")  # the feed ran out: exit 0
        return _python(OBEDIENT, str(tmp_path / "order"), str(worker.index))

    supervisor = Supervisor(
        [("market_data",), ("b",)], command, ends_run=lambda w: w.index == 0, backoff=FAST
    )
    assert await asyncio.wait_for(supervisor.run(asyncio.Event()), 30) == 0
    assert supervisor.workers[0].starts == 1  # not restarted


async def test_a_worker_that_ignores_sigterm_is_killed_at_the_stop_timeout() -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"

    async def command(worker: Worker) -> list[str]:
        return _python(stubborn)

    supervisor = Supervisor([("a",)], command, ends_run=lambda w: False, stop_timeout_s=1.0)
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))
    await asyncio.sleep(0.5)
    stop.set()
    began = time.monotonic()
    assert await asyncio.wait_for(running, 30) == 1
    assert time.monotonic() - began < 10
    process = supervisor.workers[0].process
    assert process is not None
    assert process.returncode is not None  # killed and reaped
