"""The trace index: every event of one trace, found with one read (DESIGN section 6).

Per trace id a Redis list holds the serialized envelopes of the trace's events. The event bus
appends to it in the same pipeline as the XADD that publishes them, and gives the list a TTL,
so a trace disappears on its own once nobody can still be asking about it.
"""

from __future__ import annotations

from typing import Any

from quantum.events.v1.envelope_pb2 import Envelope

from runtime.core.envelope import EnvelopeError, decode_envelope
from runtime.core.keys import Keyspace

DEFAULT_TRACE_TTL_S = 86_400


def index_commands(
    pipe: Any, keyspace: Keyspace, by_trace: dict[str, list[bytes]], ttl_s: int
) -> int:
    """Queue RPUSH + EXPIRE per trace on a redis pipeline; return how many commands."""
    for trace_id, datas in by_trace.items():
        key = keyspace.trace(trace_id)
        pipe.execute_command("RPUSH", key, *datas)
        pipe.execute_command("EXPIRE", key, ttl_s)
    return 2 * len(by_trace)


async def read_trace(redis: Any, keyspace: Keyspace, trace_id: str) -> list[Envelope]:
    """The events of a trace, each once, ordered by event id (time order).

    A publish retried after a lost reply may have indexed an event twice; it shows once.
    Entries that no longer decode are left out rather than failing the whole read.
    """
    raw: list[bytes] = await redis.lrange(keyspace.trace(trace_id), 0, -1)
    seen: dict[str, Envelope] = {}
    for data in raw:
        try:
            envelope = decode_envelope(data)
        except EnvelopeError:
            continue
        seen.setdefault(envelope.event_id, envelope)
    return [seen[event_id] for event_id in sorted(seen)]
