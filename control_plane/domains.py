"""What the control plane knows about the domains: consumer groups, lag, pending, heartbeats.

Everything is read from the broker (``OperatorStore``), so the control plane also describes
domains running in other processes: a domain is every consumer group of this namespace's
event streams (one per registered event type; the group name is the domain name) plus every
domain the composition root registered.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from quantum.control.v1.runtime_service_pb2 import ConsumerGroupInfo, DomainInfo

from control_plane.event_streams import EventStreams
from runtime.core.keys import Keyspace
from runtime.core.operator_store import OperatorStore
from runtime.core.partitioning import Partitioning, event_type_of
from runtime.core.registry import EventRegistry, default_registry

# A domain that beat within this many seconds is RUNNING; within STALE_AFTER_S, DEGRADED.
RUNNING_WITHIN_S = 5.0
STALE_AFTER_S = 30.0


@dataclass(frozen=True, slots=True)
class DomainFigures:
    """One domain as the health check sees it."""

    info: DomainInfo
    heartbeat_age_s: float | None
    lag: int
    pending: int


# A domain split over N runners reads each stream through groups "<domain>.p<i>of<N>".
_PARTITION_SUFFIX = re.compile(r"\.p\d+of\d+$")


def domain_of_group(group: str) -> str:
    """The domain a consumer group belongs to (partition groups included)."""
    return _PARTITION_SUFFIX.sub("", group)


class DomainInspector:
    """Reads the domains' consumer groups and heartbeats."""

    def __init__(
        self,
        store: OperatorStore,
        keyspace: Keyspace,
        consumes: Mapping[str, Sequence[str]] | None = None,
        registry: EventRegistry | None = None,
        *,
        partitioning: Partitioning | None = None,
    ) -> None:
        self._store = store
        self._keyspace = keyspace
        self._registry = registry or default_registry()
        self._event_streams = EventStreams(keyspace, self._registry, partitioning)
        self._consumes = {name: list(types) for name, types in (consumes or {}).items()}

    def _streams(self) -> list[str]:
        # The streams of every registered event type (each partition's): never a SCAN of the
        # whole keyspace, which costs O(all keys) on every health check. Streams that do not
        # exist are skipped.
        return self._event_streams.registered()

    def _event_type(self, stream: str) -> str:
        topic = self._event_streams.topic_of(stream)
        return event_type_of(topic) if topic is not None else stream

    async def domain_names(self) -> list[str]:
        """Every known domain, sorted: consumer groups of the event streams plus the domains
        this process registered. Cheaper than ``figures`` (no heartbeats)."""
        replies = await self._store.groups_each(self._streams())
        names = set(self._consumes)
        for reply in replies:
            if reply is not None:
                names.update(domain_of_group(g.name) for g in reply)
        return sorted(names)

    async def figures(self) -> list[DomainFigures]:
        """Every known domain with its groups, newest heartbeat, total lag and pending."""
        streams = self._streams()
        replies = await self._store.groups_each(streams)
        groups: dict[str, list[ConsumerGroupInfo]] = {}
        for stream, reply in zip(streams, replies, strict=True):
            if reply is None:
                continue
            for group in reply:
                info = ConsumerGroupInfo(
                    stream=stream,
                    group=group.name,
                    consumers=group.consumers,
                    pending=group.pending,
                    lag=group.lag or 0,
                    last_delivered_id=group.last_delivered_id,
                )
                groups.setdefault(domain_of_group(info.group), []).append(info)
        names = sorted(set(groups) | set(self._consumes))
        beats = await self._store.heartbeats_each(names)
        now_ms = time.time() * 1000
        result = []
        for name, values in zip(names, beats, strict=True):
            newest = max(values, default=0)
            age_s = (now_ms - newest) / 1000 if newest else None
            domain_groups = groups.get(name, [])
            consumes = self._consumes.get(name) or sorted(
                {self._event_type(g.stream) for g in domain_groups}
            )
            domain = DomainInfo(
                name=name, consumes=consumes, groups=domain_groups, state=_state(age_s)
            )
            if newest:
                stamp = Timestamp()
                stamp.FromMilliseconds(newest)
                domain.last_heartbeat.CopyFrom(stamp)
            result.append(
                DomainFigures(
                    info=domain,
                    heartbeat_age_s=age_s,
                    lag=sum(g.lag for g in domain_groups),
                    pending=sum(g.pending for g in domain_groups),
                )
            )
        return result


def _state(age_s: float | None) -> str:
    if age_s is None or age_s > STALE_AFTER_S:
        return "STOPPED"
    return "RUNNING" if age_s <= RUNNING_WITHIN_S else "DEGRADED"
