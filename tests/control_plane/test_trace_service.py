"""TraceService: whole traces in order, and live events with filters and a slow-client cut-off."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc import aio
from quantum.control.v1 import trace_service_pb2 as pb
from quantum.control.v1.trace_service_pb2_grpc import TraceServiceStub

from clients.wire_errors import details_of
from control_plane.live_feed import EventFilter, LiveFeed, Subscription
from control_plane.trace_servicer import causal_order
from runtime.adapters.redis.operator_store import RedisOperatorStore
from runtime.core.keys import Keyspace
from runtime.core.registry import default_registry
from tests.control_plane.conftest import Harness, start_harness, stop_harness
from tests.control_plane.support import causal_chain, index_trace, tick_envelopes, wait_until


async def drain(
    call: aio.UnaryStreamCall[pb.SubscribeTracesRequest, pb.SubscribeTracesResponse],
) -> None:
    async for _ in call:
        pass


async def test_get_trace_returns_every_event_oldest_first_with_causation(harness: Harness) -> None:
    trace_id, chain = causal_chain(4)
    await harness.bus.publish_envelopes(chain)
    await index_trace(harness.redis, harness.keyspace, chain[::-1])  # indexed newest first
    response = await TraceServiceStub(harness.channel).GetTrace(
        pb.GetTraceRequest(trace_id=trace_id), metadata=harness.viewer
    )
    assert [e.envelope.event_id for e in response.events] == [e.event_id for e in chain]
    assert [e.envelope.causation_id for e in response.events[1:]] == [
        e.event_id for e in chain[:-1]
    ]
    assert response.events[0].stream == harness.keyspace.stream("market.tick")
    assert '"symbol":"ETH-USD"' in response.events[0].payload_json.replace(" ", "")


async def test_get_trace_puts_causes_before_effects_that_share_their_time(
    harness: Harness,
) -> None:
    # Derived ids share the cause's time prefix; give the chain ids that sort backwards.
    trace_id, chain = causal_chain(3)
    prefix = chain[0].event_id[:10]
    for envelope, suffix in zip(
        chain, ("ZZZZZZZZZZZZZZZZ", "MMMMMMMMMMMMMMMM", "0000000000000000"), strict=True
    ):
        old_id = envelope.event_id
        envelope.event_id = prefix + suffix
        for other in chain:
            if other.causation_id == old_id:
                other.causation_id = envelope.event_id
    await harness.bus.publish_envelopes(chain)
    await index_trace(harness.redis, harness.keyspace, chain)
    response = await TraceServiceStub(harness.channel).GetTrace(
        pb.GetTraceRequest(trace_id=trace_id), metadata=harness.viewer
    )
    assert [e.envelope.event_id for e in response.events] == [e.event_id for e in chain]


async def test_get_trace_of_a_malformed_id_is_invalid_argument(harness: Harness) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await TraceServiceStub(harness.channel).GetTrace(
            pb.GetTraceRequest(trace_id="not-hex"), metadata=harness.viewer
        )
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.violations] == ["trace_id"]


async def test_get_trace_of_an_unknown_id_is_not_found(harness: Harness) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await TraceServiceStub(harness.channel).GetTrace(
            pb.GetTraceRequest(trace_id="ab" * 16), metadata=harness.viewer
        )
    assert details_of(caught.value).reason == "TRACE_NOT_FOUND"


async def test_subscribe_sends_only_the_events_that_match_the_filter(harness: Harness) -> None:
    trace_id, chain = causal_chain(3)
    call = TraceServiceStub(harness.channel).SubscribeTraces(
        pb.SubscribeTracesRequest(trace_id=trace_id, symbols=["ETH-USD"]),
        metadata=harness.viewer,
    )
    await wait_until(lambda: harness.plane.live_feed.following)
    await harness.bus.publish_envelopes([*tick_envelopes(5), *chain, *tick_envelopes(5)])
    received = [(await asyncio.wait_for(call.read(), 10)).event for _ in range(3)]
    assert [e.envelope.event_id for e in received] == [e.event_id for e in chain]
    assert all(e.entry_id for e in received)
    call.cancel()


async def test_subscribe_with_an_unknown_event_type_is_invalid_argument(harness: Harness) -> None:
    call = TraceServiceStub(harness.channel).SubscribeTraces(
        pb.SubscribeTracesRequest(event_types=["no.such.event"]), metadata=harness.viewer
    )
    with pytest.raises(aio.AioRpcError) as caught:
        await call.read()
    assert [v.field for v in details_of(caught.value).violations] == ["event_types[0]"]


async def test_a_subscriber_that_does_not_read_is_cut_off_with_resource_exhausted(
    aredis: object, keyspace: object, tmp_path: object
) -> None:
    h = await start_harness(aredis, keyspace, tmp_path, queue_size=32)  # type: ignore[arg-type]
    # No BDP probing: the client's receive window stays 64 KiB, so an idle reader stalls
    # the server's writes quickly.
    channel = aio.insecure_channel(h.address, options=[("grpc.http2.bdp_probe", 0)])
    try:
        call = TraceServiceStub(channel).SubscribeTraces(
            pb.SubscribeTracesRequest(), metadata=h.viewer
        )
        await wait_until(lambda: h.plane.live_feed.following)
        for _ in range(100):  # small batches: each XREAD round fits the queue
            await h.bus.publish_envelopes(tick_envelopes(20))
        # The publisher was never held up; the subscriber's stream ends in RESOURCE_EXHAUSTED.
        with pytest.raises(aio.AioRpcError) as caught:
            await asyncio.wait_for(drain(call), 30)
        details = details_of(caught.value)
        assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details.reason == "SUBSCRIBER_TOO_SLOW"
        await wait_until(lambda: h.plane.live_feed.subscriber_count == 0)
    finally:
        await channel.close()
        await stop_harness(h)


def test_causal_order_keeps_every_event_even_in_a_causation_cycle() -> None:
    _, chain = causal_chain(3)
    chain[0].causation_id = chain[2].event_id  # corrupt data: a cycle
    ordered = causal_order([*chain, chain[1]])  # and a duplicate
    assert sorted(e.event_id for e in ordered) == sorted(e.event_id for e in chain)


async def test_a_subscriber_that_never_reads_again_has_its_handler_ended(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    h = await start_harness(aredis, keyspace, tmp_path, queue_size=32)
    feed = h.plane.live_feed
    feed.cut_off_grace_s = 0.2
    subscriptions: list[Subscription] = []
    subscribe = feed.subscribe

    async def recording(event_filter: EventFilter) -> Subscription:
        subscription = await subscribe(event_filter)
        subscriptions.append(subscription)
        return subscription

    feed.subscribe = recording  # type: ignore[method-assign]
    channel = aio.insecure_channel(h.address, options=[("grpc.http2.bdp_probe", 0)])
    try:
        call = TraceServiceStub(channel).SubscribeTraces(
            pb.SubscribeTracesRequest(), metadata=h.viewer
        )
        await wait_until(lambda: bool(subscriptions) and feed.following)
        # Slowly enough that the handler keeps up until the client's window is full and its
        # writes block; then the queue fills and the subscriber is cut off.
        for _ in range(2000):
            await h.bus.publish_envelopes(tick_envelopes(20))
            await asyncio.sleep(0.005)
            if subscriptions[0].cut_off:
                break
        # The client never reads: the handler, blocked writing, is ended all the same.
        await wait_until(lambda: feed.subscriber_count == 0)
        (subscription,) = subscriptions
        assert subscription.cut_off
        assert subscription.handler is not None
        await wait_until(subscription.handler.done)
        call.cancel()
    finally:
        await channel.close()
        await stop_harness(h)


async def test_a_subscribe_cancelled_before_the_reader_starts_leaves_no_subscription(
    keyspace: Keyspace,
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never answers: the reader cannot start
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.Redis(host="127.0.0.1", port=port)
    feed = LiveFeed(RedisOperatorStore(client, keyspace), keyspace, default_registry())
    try:
        pending = asyncio.create_task(feed.subscribe(EventFilter()))
        await wait_until(lambda: feed.subscriber_count == 1)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert feed.subscriber_count == 0
        assert not feed.following
    finally:
        await feed.stop()
        await client.aclose()
        server.close()
        await server.wait_closed()
