"""Ids and tokens Redis (or int()) would reject are the caller's fault: INVALID_ARGUMENT."""

from __future__ import annotations

import grpc
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from grpc import aio
from quantum.control.v1 import policy_service_pb2 as policy_pb
from quantum.control.v1 import replay_service_pb2 as pb
from quantum.control.v1.policy_service_pb2_grpc import PolicyServiceStub
from quantum.control.v1.replay_service_pb2_grpc import ReplayServiceStub

from clients.wire_errors import details_of
from control_plane.runtime_errors import translate
from runtime.core.keys import Keyspace
from tests.control_plane.conftest import Harness

BAD_IDS = [
    "99999999999999999999-0",  # above 2**64-1
    "18446744073709551616",
    "0-99999999999999999999",
    "1-0\n",  # accepted by a regex ending in $
    "\u0661\u0662-0",  # Arabic-Indic digits match \d
    "\u00b2-0",
]


async def _read_events(h: Harness, request: pb.ReadEventsRequest) -> grpc.StatusCode:
    try:
        async for _ in ReplayServiceStub(h.channel).ReadEvents(request, metadata=h.viewer):
            pass
    except aio.AioRpcError as error:
        details = details_of(error)
        assert details.violations, details
        return details.code
    return grpc.StatusCode.OK


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_bad_range_ids_are_invalid_argument(harness: Harness, bad: str) -> None:
    for field in ("start_id", "end_id"):
        request = pb.ReadEventsRequest(range=pb.EventRange(event_type="market.tick"))
        setattr(request.range, field, bad)
        assert await _read_events(harness, request) == grpc.StatusCode.INVALID_ARGUMENT, field


async def test_times_beyond_the_entry_id_range_are_invalid_argument(harness: Harness) -> None:
    for field in ("start_time", "end_time"):
        request = pb.ReadEventsRequest(range=pb.EventRange(event_type="market.tick"))
        getattr(request.range, field).seconds = 2**62  # ms beyond 2**64-1
        assert await _read_events(harness, request) == grpc.StatusCode.INVALID_ARGUMENT, field


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_bad_dead_letter_ids_are_invalid_argument(harness: Harness, bad: str) -> None:
    replay = ReplayServiceStub(harness.channel)
    with pytest.raises(aio.AioRpcError) as listed:
        await replay.ListDeadLetters(
            pb.ListDeadLettersRequest(domain="tick_counter", page_token=bad),
            metadata=harness.viewer,
        )
    assert listed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(aio.AioRpcError) as redriven:
        await replay.RedriveDeadLetters(
            pb.RedriveDeadLettersRequest(domain="tick_counter", entry_ids=[bad]),
            metadata=harness.operator,
        )
    assert redriven.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details_of(redriven.value).violations] == ["entry_ids[0]"]


@pytest.mark.parametrize("bad", ["\u00b2", "\u0661", "1\n", "0", "-1", "9" * 30])
async def test_bad_policy_history_tokens_are_invalid_argument(harness: Harness, bad: str) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await PolicyServiceStub(harness.channel).ListPolicyHistory(
            policy_pb.ListPolicyHistoryRequest(page_token=bad), metadata=harness.viewer
        )
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.violations] == ["page_token"]


async def test_redis_rejecting_a_stream_id_maps_to_invalid_argument(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    with pytest.raises(redis.exceptions.ResponseError) as caught:
        await aredis.xrange(keyspace.stream("market.tick"), "99999999999999999999-0", "+")
    mapped = translate(caught.value)
    assert mapped is not None
    assert mapped.code == grpc.StatusCode.INVALID_ARGUMENT
