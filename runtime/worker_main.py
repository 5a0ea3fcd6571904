"""The entry point of a ``--workers`` child: ``python -m runtime.worker_main run ...``.

A supervisor may stop its workers at any moment, also while one is still importing or
connecting (seconds on a loaded machine). ``quantum run`` takes SIGTERM over only once its
event loop runs; a SIGTERM before that would kill the worker with Python's default action,
or, caught by a plain Python handler, could be lost between that handler and the loop's.
So this module's first act, before importing anything else, is to *block* SIGTERM and
SIGINT: one that arrives while the worker starts stays pending, and the worker unblocks them
once its loop handles them (``unblock_stop_signals``), which delivers it there: the worker
starts and at once drains and stops, cleanly.
"""

from __future__ import annotations

import signal
import sys

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def block_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def unblock_stop_signals() -> None:
    """Let pending and later stop signals through (call once the loop handles them)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def main() -> int:
    block_stop_signals()
    from runtime.cli import main as cli_main  # the heavy imports, while signals wait

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
