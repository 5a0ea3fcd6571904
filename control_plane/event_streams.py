"""Where the control plane finds an event type's entries: every stream of every partition.

With producer-side partitioning (``runtime.core.partitioning``) an event type split N ways
lives in N streams, one per topic ``<type>:<k>``; a read "of a type" (ReadEvents, a replay,
the live feed, a rebuild, the domains' lag) covers all of them. The keyspace turns a topic
into its stream key (hash-tagged on a Redis Cluster), so this works the same on both.
"""

from __future__ import annotations

from quantum.events.v1.envelope_pb2 import Envelope

from runtime.core.keys import Keyspace
from runtime.core.partitioning import UNPARTITIONED, Partitioning
from runtime.core.registry import EventRegistry


class EventStreams:
    """The stream keys of the registered event types, and the topic of a stream key."""

    def __init__(
        self,
        keyspace: Keyspace,
        registry: EventRegistry,
        partitioning: Partitioning | None = None,
    ) -> None:
        self.keyspace = keyspace
        self.registry = registry
        self.partitioning = partitioning or UNPARTITIONED

    def of_type(self, event_type: str) -> list[str]:
        """Every stream of ``event_type``, in partition order (one when it is unsplit)."""
        return [self.keyspace.stream(topic) for topic in self.partitioning.topics(event_type)]

    def of_types(self, event_types: list[str]) -> list[str]:
        """Every stream of each of ``event_types``, type by type."""
        return [stream for name in event_types for stream in self.of_type(name)]

    def registered(self) -> list[str]:
        """Every stream of every registered event type, sorted by type."""
        return self.of_types(sorted(self.registry.names()))

    def of_event(self, envelope: Envelope) -> str:
        """The stream an event of this type and partition key is appended to."""
        return self.keyspace.stream(
            self.partitioning.topic(envelope.event_type, envelope.partition_key)
        )

    def topic_of(self, stream: str) -> str | None:
        """The topic a stream key of this system carries (``market.tick:2``), or None when
        the key is not an event stream of this namespace."""
        known = {key: topic for topic, key in self._registered_topics()}
        if stream in known:
            return known[stream]
        # A type not registered here: undo the keyspace's spelling, checked by redoing it.
        rest = stream.removeprefix(f"{self.keyspace.namespace}:stream:")
        if rest == stream or not rest:
            return None
        untagged = rest.strip("{}")
        for candidate in (rest, untagged, untagged.rsplit("~", 1)[0], rest.split(":{", 1)[0]):
            if candidate and self.keyspace.stream(candidate) == stream:
                return candidate
        return None

    def _registered_topics(self) -> list[tuple[str, str]]:
        return [
            (topic, self.keyspace.stream(topic))
            for name in self.registry.names()
            for topic in self.partitioning.topics(name)
        ]
