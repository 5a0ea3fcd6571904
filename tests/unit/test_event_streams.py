"""EventStreams: every stream of a partitioned type, and a stream key back to its topic, on
the plain and the hash-tagged (Redis Cluster) keyspace."""

from __future__ import annotations

import pytest

from control_plane.event_streams import EventStreams
from runtime.adapters.redis.cluster.keys import ClusterKeyspace
from runtime.core.keys import Keyspace
from runtime.core.partitioning import Partitioning
from runtime.core.registry import default_registry

SPLIT = Partitioning({"market.tick": 3})


def spaces() -> list[Keyspace]:
    return [Keyspace("q"), ClusterKeyspace(namespace="q", partitioning=SPLIT)]


@pytest.mark.parametrize("keyspace", spaces(), ids=["redis", "redis_cluster"])
def test_a_split_type_has_a_stream_per_partition_and_an_unsplit_one_one(
    keyspace: Keyspace,
) -> None:
    streams = EventStreams(keyspace, default_registry(), SPLIT)
    assert streams.of_type("market.tick") == [keyspace.stream(f"market.tick:{k}") for k in range(3)]
    assert streams.of_type("ai.signal") == [keyspace.stream("ai.signal")]
    assert len(streams.registered()) == len(default_registry().names()) + 2


@pytest.mark.parametrize("keyspace", spaces(), ids=["redis", "redis_cluster"])
@pytest.mark.parametrize(
    "topic", ["market.tick:2", "ai.signal", "policy.updated", "no.such.type", "x.y:7"]
)
def test_a_stream_key_names_its_topic(keyspace: Keyspace, topic: str) -> None:
    streams = EventStreams(keyspace, default_registry(), SPLIT)
    assert streams.topic_of(keyspace.stream(topic)) == topic


@pytest.mark.parametrize("keyspace", spaces(), ids=["redis", "redis_cluster"])
def test_a_key_that_is_no_stream_of_the_namespace_names_no_topic(keyspace: Keyspace) -> None:
    streams = EventStreams(keyspace, default_registry(), SPLIT)
    assert streams.topic_of(keyspace.dlq("risk_safety")) is None
    assert streams.topic_of(Keyspace("other").stream("market.tick")) is None
    assert streams.topic_of(keyspace.stream("")) is None
