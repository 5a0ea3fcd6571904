"""Health (grpc.health.v1 and the system health) and the domains' consumer groups."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from quantum.control.v1 import runtime_service_pb2 as pb
from quantum.control.v1.runtime_service_pb2_grpc import RuntimeServiceStub

from control_plane.domains import DomainInspector
from control_plane.health import SystemHealth
from control_plane.server import SERVICE_NAMES
from runtime.adapters.redis.operator_store import RedisOperatorStore
from runtime.core.keys import Keyspace
from runtime.core.redis_server import RedisServer, free_port
from tests.control_plane.conftest import Harness, start_harness, stop_harness
from tests.control_plane.support import tick_envelopes

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_every_service_and_the_server_report_serving(harness: Harness) -> None:
    health = health_pb2_grpc.HealthStub(harness.channel)
    for service in ("", *SERVICE_NAMES):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == SERVING, service


async def test_an_unknown_service_is_not_found(harness: Harness) -> None:
    health = health_pb2_grpc.HealthStub(harness.channel)
    with pytest.raises(aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="no.Such"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_follows_redis_down_and_back(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    redis = aioredis.Redis.from_url(private_redis.url, socket_timeout=1.0)
    h = await start_harness(redis, Keyspace("health-test"), tmp_path)
    try:
        watch = health_pb2_grpc.HealthStub(h.channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE_NAMES[0])
        )
        assert (await watch.read()).status == SERVING
        private_redis.kill()
        assert (await asyncio.wait_for(watch.read(), 15)).status == NOT_SERVING
        check = await health_pb2_grpc.HealthStub(h.channel).Check(health_pb2.HealthCheckRequest())
        assert check.status == NOT_SERVING
        private_redis.restart()
        assert (await asyncio.wait_for(watch.read(), 15)).status == SERVING
        watch.cancel()
    finally:
        await stop_harness(h)
        await redis.aclose()


async def test_system_health_grades_every_component(harness: Harness) -> None:
    await harness.redis.hset(
        harness.keyspace.heartbeat("tick_counter"), "c1", str(int(time.time() * 1000))
    )
    response = await RuntimeServiceStub(harness.channel).GetSystemHealth(
        pb.GetSystemHealthRequest(), metadata=harness.viewer
    )
    components = {c.name: c for c in response.components}
    assert {"redis", "host", "policy", "domain:tick_counter", "exchange:paper"} <= set(components)
    assert components["redis"].status == pb.HEALTH_STATUS_HEALTHY
    assert float(components["redis"].figures["latency_ms"]) >= 0
    assert components["domain:tick_counter"].status == pb.HEALTH_STATUS_HEALTHY
    assert "memory_pct" in components["host"].figures
    # No execution domain runs here, so the paper exchange is not healthy: the worst wins.
    assert components["exchange:paper"].status != pb.HEALTH_STATUS_HEALTHY
    assert response.status == max(c.status for c in response.components)


async def test_system_health_is_cached_for_five_seconds(harness: Harness) -> None:
    stub = RuntimeServiceStub(harness.channel)
    first = await stub.GetSystemHealth(pb.GetSystemHealthRequest(), metadata=harness.viewer)
    second = await stub.GetSystemHealth(pb.GetSystemHealthRequest(), metadata=harness.viewer)
    assert first.checked_at == second.checked_at


async def test_list_domains_shows_groups_lag_and_pending(harness: Harness) -> None:
    await harness.bus.publish_envelopes(tick_envelopes(5))
    stream = harness.keyspace.stream("market.tick")
    await harness.redis.xgroup_create(stream, "tick_counter", id="0")
    await harness.redis.xreadgroup("tick_counter", "c1", {stream: ">"}, count=2)
    await harness.redis.hset(
        harness.keyspace.heartbeat("tick_counter"), "c1", str(int(time.time() * 1000))
    )
    response = await RuntimeServiceStub(harness.channel).ListDomains(
        pb.ListDomainsRequest(), metadata=harness.viewer
    )
    domain = {d.name: d for d in response.domains}["tick_counter"]
    assert list(domain.consumes) == ["market.tick"]
    assert domain.state == "RUNNING"
    (group,) = domain.groups
    assert (group.stream, group.consumers, group.pending, group.lag) == (stream, 1, 2, 3)


async def test_a_configured_postgres_that_does_not_answer_is_critical(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    store = RedisOperatorStore(aredis, keyspace)
    health = SystemHealth(
        store,
        DomainInspector(store, keyspace),
        postgres_dsn=f"postgresql://quantum@127.0.0.1:{free_port()}/quantum",
    )
    response = await health.check()
    components = {c.name: c for c in response.components}
    assert components["postgres"].status == pb.HEALTH_STATUS_CRITICAL
    assert "cannot connect" in components["postgres"].detail
    assert response.status == pb.HEALTH_STATUS_CRITICAL


async def test_listing_domains_reads_the_registered_streams_without_scanning(
    private_redis: RedisServer, keyspace: Keyspace
) -> None:
    client = aioredis.Redis.from_url(private_redis.url)
    try:
        stream = keyspace.stream("market.tick")
        await client.xadd(stream, {"envelope": b"x"})
        await client.xgroup_create(stream, "tick_counter", id="0")
        await client.config_resetstat()
        figures = await DomainInspector(RedisOperatorStore(client, keyspace), keyspace).figures()
        assert [f.info.name for f in figures] == ["tick_counter"]
        assert [g.stream for g in figures[0].info.groups] == [stream]
        stats = await client.info("commandstats")
        assert "cmdstat_scan" not in stats
    finally:
        await client.aclose()
