"""The trace index: every event of one trace, found with one read (DESIGN section 6).

Per trace id a Redis list holds the serialized envelopes of the trace's events. The event bus
appends to it in the same server-side step as the XADD that publishes them (its publish
script) and gives the list a TTL, so a trace disappears on its own once nobody can still be
asking about it. Readers take the whole list with one LRANGE and order it by event id.
"""

from __future__ import annotations

from typing import Any

from quantum.events.v1.envelope_pb2 import Envelope

from runtime.core.envelope import EnvelopeError, decode_envelope
from runtime.core.keys import Keyspace

DEFAULT_TRACE_TTL_S = 3_600  # a trace is asked about while it is fresh
DEFAULT_MAX_TRACES = 100_000  # the index's bound by count (the oldest go first)


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
