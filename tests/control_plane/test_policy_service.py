"""PolicyService: reads, compare-and-set writes, the audit trail, watching and history."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf.field_mask_pb2 import FieldMask
from grpc import aio
from quantum.control.v1 import policy_service_pb2 as pb
from quantum.control.v1.policy_service_pb2_grpc import PolicyServiceStub
from quantum.events.v1 import policy_pb2

from clients.wire_errors import details_of
from control_plane.errors import ERROR_DOMAIN
from control_plane.policy_servicer import PolicyServicer
from runtime.core.keys import Keyspace
from tests.control_plane.conftest import Harness, start_harness, stop_harness
from tests.integration.bus_support import wait_until


def stub(h: Harness) -> PolicyServiceStub:
    return PolicyServiceStub(h.channel)


async def test_get_policy_returns_the_store_policy_with_its_version(harness: Harness) -> None:
    response = await stub(harness).GetPolicy(pb.GetPolicyRequest(), metadata=harness.viewer)
    assert response.policy.version == harness.store.get_policy().version
    assert response.policy.mode == policy_pb2.RISK_MODE_NORMAL


async def test_switch_mode_is_recorded_with_the_principal_behind_the_token(
    harness: Harness,
) -> None:
    version = harness.store.get_policy().version
    response = await stub(harness).SwitchMode(
        pb.SwitchModeRequest(
            mode=policy_pb2.RISK_MODE_DEFENSIVE, expected_version=version, reason="drill"
        ),
        metadata=harness.operator,
    )
    assert response.policy.mode == policy_pb2.RISK_MODE_DEFENSIVE
    assert response.policy.version == version + 1
    assert response.policy.updated_by == "operator:otto"
    history = await stub(harness).ListPolicyHistory(
        pb.ListPolicyHistoryRequest(page_size=1), metadata=harness.viewer
    )
    assert history.changes[0].changed_by == "operator:otto"
    assert history.changes[0].reason == "drill"
    assert list(history.changes[0].changed_fields) == ["mode"]


async def test_a_stale_expected_version_is_aborted_with_the_current_version(
    harness: Harness,
) -> None:
    version = harness.store.get_policy().version
    await stub(harness).SwitchMode(
        pb.SwitchModeRequest(mode=policy_pb2.RISK_MODE_AGGRESSIVE, reason="first"),
        metadata=harness.operator,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(harness).SwitchMode(
            pb.SwitchModeRequest(
                mode=policy_pb2.RISK_MODE_DEFENSIVE, expected_version=version, reason="stale"
            ),
            metadata=harness.operator,
        )
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.ABORTED
    assert details.reason == "POLICY_VERSION_CONFLICT"
    assert details.domain == ERROR_DOMAIN
    assert details.metadata["current_version"] == str(version + 1)
    assert harness.store.get_policy().mode.value == "AGGRESSIVE"


async def test_update_policy_changes_only_the_masked_fields(harness: Harness) -> None:
    before = harness.store.get_policy()
    request = pb.UpdatePolicyRequest(
        policy=policy_pb2.Policy(
            normal=policy_pb2.ModeLimits(max_leverage="2.5", max_open_positions=99),
            trading_state=policy_pb2.TRADING_STATE_HALTED,
        ),
        update_mask=FieldMask(paths=["normal.max_leverage", "trading_state"]),
        expected_version=before.version,
        reason="tighten",
    )
    response = await stub(harness).UpdatePolicy(request, metadata=harness.operator)
    assert response.policy.normal.max_leverage == "2.5"
    assert response.policy.trading_state == policy_pb2.TRADING_STATE_HALTED
    # Not in the mask: unchanged, although the request carried a value.
    assert (
        response.policy.normal.max_open_positions == before.limits[before.mode].max_open_positions
    )


async def test_invalid_values_are_invalid_argument_with_field_violations(harness: Harness) -> None:
    request = pb.UpdatePolicyRequest(
        policy=policy_pb2.Policy(normal=policy_pb2.ModeLimits(max_leverage="lots")),
        update_mask=FieldMask(paths=["normal.max_leverage", "normal.no_such_limit"]),
        reason="bad",
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(harness).UpdatePolicy(request, metadata=harness.operator)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "INVALID_REQUEST"
    assert [v.field for v in details.violations] == ["update_mask.paths[1]"]

    request.update_mask.paths[:] = ["normal.max_leverage"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(harness).UpdatePolicy(request, metadata=harness.operator)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "POLICY_INVALID"
    assert [v.field for v in details.violations] == ["policy.normal.max_leverage"]


@pytest.mark.parametrize(
    ("request_message", "field"),
    [
        (pb.SwitchModeRequest(reason="x"), "mode"),
        (pb.SwitchModeRequest(mode=policy_pb2.RISK_MODE_NORMAL, reason=""), "reason"),
        (
            pb.SwitchModeRequest(mode=policy_pb2.RISK_MODE_NORMAL, reason="x", expected_version=0),
            "expected_version",
        ),
    ],
)
async def test_bad_switch_mode_requests_name_the_field(
    harness: Harness, request_message: pb.SwitchModeRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(harness).SwitchMode(request_message, metadata=harness.operator)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.violations] == [field]


async def test_empty_update_mask_is_invalid_argument(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(harness).UpdatePolicy(
            pb.UpdatePolicyRequest(reason="nothing"), metadata=harness.operator
        )
    assert details_of(caught.value).violations[0].field == "update_mask"


async def test_history_pages_newest_first_with_a_token(harness: Harness) -> None:
    for mode in (policy_pb2.RISK_MODE_DEFENSIVE, policy_pb2.RISK_MODE_AGGRESSIVE):
        await stub(harness).SwitchMode(
            pb.SwitchModeRequest(mode=mode, reason="page"), metadata=harness.operator
        )
    first = await stub(harness).ListPolicyHistory(
        pb.ListPolicyHistoryRequest(page_size=2), metadata=harness.viewer
    )
    assert [c.version for c in first.changes] == [3, 2]
    assert first.next_page_token
    second = await stub(harness).ListPolicyHistory(
        pb.ListPolicyHistoryRequest(page_size=2, page_token=first.next_page_token),
        metadata=harness.viewer,
    )
    assert [c.version for c in second.changes] == [1]
    assert second.next_page_token == ""


async def test_watch_sends_the_current_policy_then_each_change(harness: Harness) -> None:
    call = stub(harness).WatchPolicy(pb.WatchPolicyRequest(), metadata=harness.viewer)
    first = await call.read()
    assert first.policy.version == 1
    assert not first.HasField("change")
    await stub(harness).SwitchMode(
        pb.SwitchModeRequest(mode=policy_pb2.RISK_MODE_DEFENSIVE, reason="watch"),
        metadata=harness.operator,
    )
    second = await asyncio.wait_for(call.read(), 10)
    assert second.policy.version == 2
    assert second.change.changed_by == "operator:otto"
    assert list(second.change.changed_fields) == ["mode"]
    call.cancel()


async def test_watch_resumes_after_a_version_from_the_history(harness: Harness) -> None:
    for mode in (policy_pb2.RISK_MODE_DEFENSIVE, policy_pb2.RISK_MODE_AGGRESSIVE):
        await stub(harness).SwitchMode(
            pb.SwitchModeRequest(mode=mode, reason="resume"), metadata=harness.operator
        )
    call = stub(harness).WatchPolicy(
        pb.WatchPolicyRequest(after_version=1), metadata=harness.viewer
    )
    versions = [(await asyncio.wait_for(call.read(), 10)).change.version for _ in range(2)]
    assert versions == [2, 3]
    call.cancel()


async def test_watch_after_a_version_above_the_current_is_out_of_range(harness: Harness) -> None:
    call = stub(harness).WatchPolicy(
        pb.WatchPolicyRequest(after_version=7), metadata=harness.viewer
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call.read(), 10)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.OUT_OF_RANGE
    assert details.reason == "POLICY_VERSION_AHEAD"
    assert details.metadata == {"after_version": "7", "current_version": "1"}


async def test_watch_across_a_history_gap_sends_the_current_policy(harness: Harness) -> None:
    for mode in (policy_pb2.RISK_MODE_DEFENSIVE, policy_pb2.RISK_MODE_AGGRESSIVE):
        await stub(harness).SwitchMode(
            pb.SwitchModeRequest(mode=mode, reason="gap"), metadata=harness.operator
        )
    await harness.redis.delete(harness.keyspace.policy_history())  # the records are lost
    call = stub(harness).WatchPolicy(
        pb.WatchPolicyRequest(after_version=1), metadata=harness.viewer
    )
    first = await asyncio.wait_for(call.read(), 10)
    assert first.policy.version == 3
    assert first.policy.mode == policy_pb2.RISK_MODE_AGGRESSIVE
    call.cancel()


async def test_a_watcher_that_stops_reading_is_cut_off(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    h = await start_harness(aredis, keyspace, tmp_path)
    servicer = h.plane._servicers[0]
    assert isinstance(servicer, PolicyServicer)
    servicer.stalled_write_grace_s = 0.3
    channel = aio.insecure_channel(h.address, options=[("grpc.http2.bdp_probe", 0)])
    try:
        call = PolicyServiceStub(channel).WatchPolicy(pb.WatchPolicyRequest(), metadata=h.viewer)
        await wait_until(lambda: h.store.subscriber_count == 1)
        modes = [policy_pb2.RISK_MODE_DEFENSIVE, policy_pb2.RISK_MODE_NORMAL]
        stub = PolicyServiceStub(h.channel)
        for n in range(2000):  # until the client's window is full and a write blocks
            await stub.SwitchMode(
                pb.SwitchModeRequest(mode=modes[n % 2], reason="r" * 500), metadata=h.operator
            )
            if h.store.subscriber_count == 0:
                break
        # The client never reads: its handler, blocked writing, is ended all the same.
        await wait_until(lambda: h.store.subscriber_count == 0)
        call.cancel()
    finally:
        await channel.close()
        await stop_harness(h)
