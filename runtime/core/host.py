"""What every hosting process needs, whatever the engine: a consumer name and the loop."""

from __future__ import annotations

import asyncio
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
