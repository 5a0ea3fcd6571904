"""Redis Cluster key names and URLs, without a cluster: what shares a slot, where the
partitions of a stream land, which URLs select the engine, which errors are transient."""

from __future__ import annotations

import pytest
from redis.exceptions import ClusterDownError, MovedError, RedisClusterException, ResponseError

from runtime.adapters.redis.cluster.keys import SLOTS, ClusterKeyspace, slot_of
from runtime.adapters.redis.cluster.url import parse_cluster_url
from runtime.adapters.redis.errors import is_transient
from runtime.core.keys import Keyspace
from runtime.core.partitioning import Partitioning
from runtime.engines import engine_kind

SPLIT = Partitioning({"market.tick": 3, "portfolio.pnl.updated": 3})


def test_a_cluster_url_names_its_seeds_and_credentials() -> None:
    parsed = parse_cluster_url("redis+cluster://user:s%40cret@10.0.0.1:7000,10.0.0.2:7001")
    assert parsed.seeds == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (parsed.username, parsed.password) == ("user", "s@cret")
    with pytest.raises(ValueError, match="host:port"):
        parse_cluster_url("redis+cluster://10.0.0.1")
    with pytest.raises(ValueError, match="database 0"):
        parse_cluster_url("redis+cluster://10.0.0.1:7000/3")


def test_what_one_commit_touches_shares_one_slot_and_the_policy_keys_another() -> None:
    keys = ClusterKeyspace("q", SPLIT)
    group = keys.group("tick_counter", 1, 3)
    partition = {
        keys.state("tick_counter", 1, 3),
        keys.lease("tick_counter", 1, 3),
        keys.fencing_tokens_of(group),
        keys.state_epoch(group),
        keys.processed_bucket(group, "01J0000000000000000000000"),
    }
    assert len({slot_of(k) for k in partition}) == 1
    unsplit = {keys.state("risk"), keys.dlq("risk"), keys.dead_lettered("risk")}
    unsplit |= {keys.processed_bucket("risk", "01J"), keys.state_epoch("risk")}
    assert len({slot_of(k) for k in unsplit}) == 1
    policy = {keys.policy(), keys.policy_history(), keys.stream("policy.updated")}
    policy |= {keys.trace("a" * 32), keys.trace_registry()}
    assert len({slot_of(k) for k in policy}) == 1
    assert all(k.startswith("q:") for k in partition | unsplit | policy)


def test_the_partitions_of_a_type_take_their_share_of_the_slots() -> None:
    keys = ClusterKeyspace("q", Partitioning({"market.tick": 8}))
    for k in range(8):
        slot = slot_of(keys.stream(f"market.tick:{k}"))
        assert k * SLOTS // 8 <= slot < (k + 1) * SLOTS // 8


def test_a_cluster_url_selects_the_cluster_engine() -> None:
    assert engine_kind("redis+cluster://127.0.0.1:7000,127.0.0.1:7001") == "redis_cluster"
    assert engine_kind("redis://127.0.0.1:6379/0") == "redis"


def test_a_plain_keyspace_becomes_the_cluster_one() -> None:
    keyspace = ClusterKeyspace.of(Keyspace("q"), SPLIT)
    assert keyspace.namespace == "q"
    assert keyspace.partitioning == SPLIT
    assert keyspace.stream("market.tick:1") != Keyspace("q").stream("market.tick:1")


def test_cluster_replies_that_mean_not_now_are_transient() -> None:
    assert is_transient(MovedError("3999 127.0.0.1:7001"))
    assert is_transient(ClusterDownError("The cluster is down"))
    assert is_transient(ResponseError("MOVED 3999 127.0.0.1:7001"))
    assert is_transient(ResponseError("TRYAGAIN Multiple keys request during rehashing"))
    assert is_transient(ResponseError("UNBLOCKED the stream key no longer exists"))
    assert is_transient(RedisClusterException("Redis Cluster cannot be connected. Please ..."))
    assert not is_transient(ResponseError("CROSSSLOT Keys in request don't hash to the same slot"))
    assert not is_transient(RedisClusterException("No way to dispatch this command"))


@pytest.mark.parametrize("topic", ["market.tick", "policy.updated", "market.tick:2"])
def test_every_key_starts_with_the_namespace(topic: str) -> None:
    assert ClusterKeyspace("q", SPLIT).stream(topic).startswith("q:")
