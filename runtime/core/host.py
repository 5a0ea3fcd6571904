"""What every hosting process needs, whatever the engine: a consumer name and the loop."""

from __future__ import annotations

import asyncio
import gc
import os
import socket


def default_consumer_name() -> str:
    """host-pid: unique per process, and recognisable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}"


def install_uvloop() -> bool:
    """Use uvloop's event loop policy when it is installed; True when it is."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def tune_gc() -> None:
    """Garbage collection for a long-running event loop, once start-up is done.

    Every object made while starting (modules, descriptors, the domains' tables) is frozen out
    of future collections, and the youngest generation is collected after 50,000 allocations
    instead of 700: the hot path makes a few short-lived objects per event (envelopes,
    payloads, contexts) that reference counting frees, so frequent young collections only
    rescan the same survivors. Measured: about 1 µs of CPU less per event in a consumer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
