"""ReplayService: reading ranges, replaying to one domain (dry run and publish), dead letters."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio
from quantum.control.v1 import replay_service_pb2 as pb
from quantum.control.v1.replay_service_pb2_grpc import ReplayServiceStub

from clients.wire_errors import details_of
from runtime.core.dead_letters import DeadLetter, xadd_args
from tests.control_plane.conftest import Harness
from tests.control_plane.support import tick_envelopes


def stub(h: Harness) -> ReplayServiceStub:
    return ReplayServiceStub(h.channel)


async def publish_ticks(h: Harness, count: int) -> list[str]:
    return await h.bus.publish_envelopes(tick_envelopes(count))


async def test_read_events_streams_a_range_by_entry_id_with_a_limit(harness: Harness) -> None:
    ids = await publish_ticks(harness, 10)
    request = pb.ReadEventsRequest(
        range=pb.EventRange(event_type="market.tick", start_id=ids[2], end_id=ids[8], limit=4)
    )
    events = [r.event async for r in stub(harness).ReadEvents(request, metadata=harness.viewer)]
    assert [e.entry_id for e in events] == ids[2:6]
    assert all(e.envelope.event_type == "market.tick" for e in events)


async def test_read_events_by_time_range(harness: Harness) -> None:
    ids = await publish_ticks(harness, 3)
    first_ms = int(ids[0].split("-")[0])
    request = pb.ReadEventsRequest(range=pb.EventRange(event_type="market.tick"))
    request.range.start_time.FromMilliseconds(first_ms)
    request.range.end_time.FromMilliseconds(first_ms + 60_000)
    events = [r.event async for r in stub(harness).ReadEvents(request, metadata=harness.viewer)]
    assert [e.entry_id for e in events] == ids


async def test_a_bad_range_names_every_bad_field(harness: Harness) -> None:
    request = pb.ReadEventsRequest(
        range=pb.EventRange(event_type="no.such", start_id="yesterday", limit=-1)
    )
    with pytest.raises(aio.AioRpcError) as caught:
        async for _ in stub(harness).ReadEvents(request, metadata=harness.viewer):
            pass
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(v.field for v in details.violations) == [
        "range.event_type",
        "range.limit",
        "range.start_id",
    ]


async def test_a_dry_run_returns_the_outputs_and_publishes_nothing(harness: Harness) -> None:
    await publish_ticks(harness, 3)
    request = pb.ReplayToDomainRequest(
        domain="tick_counter", range=pb.EventRange(event_type="market.tick")
    )
    responses = [r async for r in stub(harness).ReplayToDomain(request, metadata=harness.viewer)]
    assert [(r.processed, r.total) for r in responses] == [(1, 3), (2, 3), (3, 3)]
    assert all(len(r.outputs) == 1 and not r.published for r in responses)
    assert responses[0].outputs[0].causation_id == responses[0].input.envelope.event_id
    assert await harness.redis.xlen(harness.keyspace.stream("portfolio.pnl.updated")) == 0


async def test_a_publishing_replay_puts_the_outputs_on_their_streams(harness: Harness) -> None:
    await publish_ticks(harness, 2)
    request = pb.ReplayToDomainRequest(
        domain="tick_counter", range=pb.EventRange(event_type="market.tick"), publish=True
    )
    responses = [r async for r in stub(harness).ReplayToDomain(request, metadata=harness.operator)]
    assert all(r.published for r in responses)
    assert await harness.redis.xlen(harness.keyspace.stream("portfolio.pnl.updated")) == 2


async def test_replay_to_an_unknown_domain_is_not_found(harness: Harness) -> None:
    request = pb.ReplayToDomainRequest(
        domain="nobody", range=pb.EventRange(event_type="market.tick")
    )
    with pytest.raises(aio.AioRpcError) as caught:
        async for _ in stub(harness).ReplayToDomain(request, metadata=harness.viewer):
            pass
    assert details_of(caught.value).reason == "DOMAIN_UNKNOWN"


async def add_dead_letters(h: Harness, count: int) -> list[str]:
    ids = []
    for envelope in tick_envelopes(count):
        letter = DeadLetter(
            original_stream=h.keyspace.stream("market.tick"),
            original_entry_id="1-0",
            payload=envelope.SerializeToString(),
            reason="handler_failed",
            error_type="ValueError",
            error_message="boom",
            attempts=5,
            failed_at_ms=1_700_000_000_000,
            consumer="c1",
            event_type="market.tick",
            event_id=envelope.event_id,
        )
        raw = await h.redis.execute_command(*xadd_args(h.keyspace, "tick_counter", letter))
        ids.append(raw.decode() if isinstance(raw, bytes) else raw)
    return ids


async def test_dead_letters_page_oldest_first(harness: Harness) -> None:
    ids = await add_dead_letters(harness, 3)
    first = await stub(harness).ListDeadLetters(
        pb.ListDeadLettersRequest(domain="tick_counter", page_size=2), metadata=harness.viewer
    )
    assert [d.entry_id for d in first.dead_letters] == ids[:2]
    assert first.dead_letters[0].attempts == 5
    assert first.dead_letters[0].error_message == "boom"
    second = await stub(harness).ListDeadLetters(
        pb.ListDeadLettersRequest(
            domain="tick_counter", page_size=2, page_token=first.next_page_token
        ),
        metadata=harness.viewer,
    )
    assert [d.entry_id for d in second.dead_letters] == ids[2:]
    assert second.next_page_token == ""


async def test_redrive_puts_each_letter_back_once(harness: Harness) -> None:
    ids = await add_dead_letters(harness, 2)
    request = pb.RedriveDeadLettersRequest(domain="tick_counter")
    first = await stub(harness).RedriveDeadLetters(request, metadata=harness.operator)
    assert (first.redriven, first.already_redriven) == (2, 0)
    assert list(first.entry_ids) == ids
    second = await stub(harness).RedriveDeadLetters(request, metadata=harness.operator)
    assert (second.redriven, second.already_redriven) == (0, 2)
    assert await harness.redis.xlen(harness.keyspace.stream("market.tick")) == 2
    listed = await stub(harness).ListDeadLetters(
        pb.ListDeadLettersRequest(domain="tick_counter"), metadata=harness.viewer
    )
    assert all(d.redriven_entry_id for d in listed.dead_letters)


async def test_redrive_of_a_missing_letter_is_not_found(harness: Harness) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await stub(harness).RedriveDeadLetters(
            pb.RedriveDeadLettersRequest(domain="tick_counter", entry_ids=["1-1"]),
            metadata=harness.operator,
        )
    assert details_of(caught.value).code == grpc.StatusCode.NOT_FOUND


async def test_malformed_dead_letter_requests_are_invalid_argument(harness: Harness) -> None:
    for request, field in (
        (pb.RedriveDeadLettersRequest(domain="tick_counter", entry_ids=["x"]), "entry_ids[0]"),
        (pb.RedriveDeadLettersRequest(domain=""), "domain"),
    ):
        with pytest.raises(aio.AioRpcError) as caught:
            await stub(harness).RedriveDeadLetters(request, metadata=harness.operator)
        assert [v.field for v in details_of(caught.value).violations] == [field]
    with pytest.raises(aio.AioRpcError) as caught:
        await stub(harness).ListDeadLetters(
            pb.ListDeadLettersRequest(domain="tick_counter", page_size=-1),
            metadata=harness.viewer,
        )
    assert details_of(caught.value).code == grpc.StatusCode.INVALID_ARGUMENT


async def test_redrive_trims_the_stream_no_harder_than_the_bus(harness: Harness) -> None:
    harness.bus.maxlen = 20_000  # before the bus first publishes to market.tick
    stream = harness.keyspace.stream("market.tick")
    async with harness.redis.pipeline(transaction=False) as pipe:
        for _ in range(12_000):
            pipe.xadd(stream, {"envelope": b"x"})
        await pipe.execute()
    await add_dead_letters(harness, 1)
    response = await stub(harness).RedriveDeadLetters(
        pb.RedriveDeadLettersRequest(domain="tick_counter"), metadata=harness.operator
    )
    assert response.redriven == 1
    assert await harness.redis.xlen(stream) == 12_001
