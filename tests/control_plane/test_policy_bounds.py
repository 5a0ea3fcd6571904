"""UpdatePolicy reads numbers with the one strict parser and bounds every limit: a policy that
could not be read back is never written, and an exponent bomb costs the server nothing."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from grpc import aio
from quantum.control.v1 import policy_service_pb2 as pb
from quantum.control.v1.policy_service_pb2_grpc import PolicyServiceStub
from quantum.events.v1 import policy_pb2

from clients.wire_errors import details_of
from tests.control_plane.conftest import Harness


def _update(path: str, value: str) -> pb.UpdatePolicyRequest:
    policy = policy_pb2.Policy()
    mode, _, name = path.partition(".")
    setattr(getattr(policy, mode), name, value)
    return pb.UpdatePolicyRequest(
        policy=policy, update_mask=FieldMask(paths=[path]), reason="hostile input"
    )


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("normal.max_leverage", "1e999999999"),  # a billion digits when written out
        ("normal.max_leverage", "1e400"),  # small enough to write, too big to read back
        ("normal.max_position_notional", "9" * 40),
        ("normal.max_position_notional", "1000000000001"),
        ("normal.max_leverage", "101"),
        ("normal.max_leverage", "NaN"),
        ("normal.max_leverage", "1_0"),
        ("normal.max_leverage", " 2"),
        ("normal.max_leverage", "\u0662"),
        ("normal.min_confidence", "0.123456789"),
    ],
)
async def test_hostile_limits_are_invalid_argument_and_change_nothing(
    harness: Harness, path: str, value: str
) -> None:
    stub = PolicyServiceStub(harness.channel)
    before = harness.store.get_policy()
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.UpdatePolicy(_update(path, value), metadata=harness.operator, timeout=10)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "POLICY_INVALID"
    assert [v.field for v in details.violations] == [f"policy.{path}"]
    assert len(details.message) < 1_000  # the value is named, never echoed at length
    assert harness.store.get_policy().version == before.version
    read = await stub.GetPolicy(pb.GetPolicyRequest(), metadata=harness.viewer)
    assert read.policy.version == before.version


async def test_the_largest_limits_are_accepted_and_read_back(harness: Harness) -> None:
    stub = PolicyServiceStub(harness.channel)
    largest = {
        "normal.max_position_notional": "1000000000000",
        "normal.max_leverage": "100",
        "normal.max_open_positions": "10000",
        "normal.max_orders_per_second": "100000",
    }
    policy = policy_pb2.Policy()
    for path, value in largest.items():
        name = path.partition(".")[2]
        field = policy_pb2.ModeLimits.DESCRIPTOR.fields_by_name[name]
        setattr(policy.normal, name, int(value) if field.type == field.TYPE_UINT32 else value)
    request = pb.UpdatePolicyRequest(
        policy=policy, update_mask=FieldMask(paths=list(largest)), reason="widest limits"
    )
    await stub.UpdatePolicy(request, metadata=harness.operator)
    read = (await stub.GetPolicy(pb.GetPolicyRequest(), metadata=harness.viewer)).policy
    assert read.normal.max_position_notional == "1000000000000"
    assert read.normal.max_leverage == "100"
    assert (read.normal.max_open_positions, read.normal.max_orders_per_second) == (10000, 100000)
