"""Producer-side partitioning: where an event goes and which partitions a runner reads."""

from __future__ import annotations

import zlib

import pytest

from runtime.core.partitioning import (
    UNPARTITIONED,
    Partitioning,
    event_type_of,
    partition_of,
    topic_name,
)


def test_an_unnamed_type_keeps_its_one_topic_named_as_before() -> None:
    assert UNPARTITIONED.topic("market.tick", "BTC") == "market.tick"
    assert UNPARTITIONED.topics("market.tick") == ["market.tick"]
    assert Partitioning({"market.tick": 1}).counts == {}


def test_a_key_always_lands_in_crc32_mod_n() -> None:
    parts = Partitioning({"market.tick": 4})
    for key in ("BTC", "ETH", "SOL", "", "ü-key"):
        expected = zlib.crc32(key.encode()) % 4
        assert parts.topic("market.tick", key) == f"market.tick:{expected}"
        assert partition_of(key, 4) == expected
    assert parts.topic("ai.signal.generated", "BTC") == "ai.signal.generated"
    assert parts.topics("market.tick") == [f"market.tick:{k}" for k in range(4)]
    assert event_type_of("market.tick:3") == "market.tick"
    assert topic_name("market.tick", 0, 1) == "market.tick"


def test_a_split_domain_reads_the_partitions_congruent_to_its_own() -> None:
    parts = Partitioning({"market.tick": 6})
    assert parts.topics_read_by("market.tick", 1, 3) == ["market.tick:1", "market.tick:4"]
    assert parts.topics_read_by("market.tick", 0, 1) == parts.topics("market.tick")
    # An unsplit type is read whole by every runner (which keeps its own keys).
    assert parts.topics_read_by("portfolio.pnl.updated", 1, 3) == ["portfolio.pnl.updated"]
    # A key's partition and its state's owner agree: crc mod 6 mod 3 == crc mod 3.
    for key in ("BTC", "ETH", "SOL", "ADA", "XRP"):
        k = int(parts.topic("market.tick", key).rsplit(":", 1)[1])
        assert f"market.tick:{k}" in parts.topics_read_by("market.tick", partition_of(key, 3), 3)


def test_a_split_that_does_not_divide_the_partitions_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        Partitioning({"market.tick": 6}).topics_read_by("market.tick", 0, 4)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("market.tick", "expected TYPE=N"),
        ("market.tick=", "expected TYPE=N"),
        ("market.tick=-1", "expected TYPE=N"),
        ("market.tick=1e3", "expected TYPE=N"),
        ("market.tick=٣", "expected TYPE=N"),
        ("market.tick=0", "between 1 and 1024"),
        ("market.tick=1025", "between 1 and 1024"),
        ("a=2,a=3", "given twice"),
        ("a:b=2", "without ':'"),
    ],
)
def test_a_bad_spec_is_refused_with_the_reason(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Partitioning.parse(spec)


def test_a_spec_parses_and_round_trips() -> None:
    parts = Partitioning.parse(" market.tick=4 , ai.signal.generated=2,")
    assert parts.counts == {"market.tick": 4, "ai.signal.generated": 2}
    assert parts == Partitioning({"ai.signal.generated": 2, "market.tick": 4})
    assert Partitioning.parse("") == UNPARTITIONED
    assert "market.tick=4" in repr(parts)
