"""Generated hostile requests to every RPC of the control plane.

Every method of every ``quantum.control.v1`` service gets a fixed, derandomized sample of
requests built from its descriptor (every field hostile or plausible), sent as no one, as a
viewer, as an operator and with a forged token, plus request bodies of random bytes.
Invariants: no call answers UNKNOWN or INTERNAL; no write succeeds without the operator role;
afterwards the policy still reads back, every limit a strict decimal.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc import aio
from hypothesis import strategies as st
from quantum.control.v1 import policy_service_pb2 as policy_pb
from quantum.control.v1 import replay_service_pb2 as replay_pb
from quantum.control.v1 import runtime_service_pb2 as runtime_pb
from quantum.control.v1 import trace_service_pb2 as trace_pb
from quantum.control.v1.policy_service_pb2_grpc import PolicyServiceStub

from control_plane.auth import Role, required_role
from runtime.core.decimals import parse_decimal
from runtime.core.policy.changes import INT_FIELDS
from tests.control_plane.conftest import Harness
from tests.fuzz.strategies import build, collect, messages

REQUESTS_PER_METHOD = 40
RAW_PER_METHOD = 4
ROLES = ["operator", "viewer", "operator", "none", "viewer", "forged"]
NEVER = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})
# Domains the harness can replay and repair, among names the fuzzer makes up.
DOMAINS = [*["tick_counter"] * 4, "risk_safety", "", "Tick Counter", "x" * 100, "tick\n"]


def _methods() -> list[tuple[str, MethodDescriptor]]:
    found = []
    for module in (policy_pb, replay_pb, runtime_pb, trace_pb):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found.append((f"/{service.full_name}/{method.name}", method))
    return found


def _requests(method: MethodDescriptor) -> list[Message]:
    request_class = GetMessageClass(method.input_type)
    strategy = st.tuples(
        st.one_of(
            messages(method.input_type, valid=True), messages(method.input_type, valid=False)
        ),
        st.sampled_from(DOMAINS),
    )
    built = []
    for values, domain in collect(strategy, REQUESTS_PER_METHOD):
        request = build(request_class, values)
        if "domain" in method.input_type.fields_by_name:
            request.domain = domain  # type: ignore[attr-defined]
        built.append(request)
    return built


def _metadata(h: Harness, role: str) -> tuple[tuple[str, str], ...] | None:
    if role == "forged":
        return (("authorization", "Bearer " + "f" * 43),)
    return h.as_role(role)


def _is_write(path: str, request: Message | bytes) -> bool:
    if required_role(path) is Role.OPERATOR:
        return True
    return path.endswith("/ReplayToDomain") and bool(getattr(request, "publish", False))


async def _call(
    channel: aio.Channel, path: str, streaming: bool, request: Message | bytes, metadata: Any
) -> grpc.StatusCode:
    body = request if isinstance(request, bytes) else request.SerializeToString()
    try:
        if streaming:
            stream = channel.unary_stream(path)(body, metadata=metadata, timeout=0.4)
            received = 0
            async for _ in stream:
                received += 1
                if received >= 3:
                    stream.cancel()
                    break
        else:
            await channel.unary_unary(path)(body, metadata=metadata, timeout=10)
    except aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_hostile_requests_to_every_rpc(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    codes: Counter[str] = Counter()
    failures: list[str] = []
    cases = 0
    raw = collect(st.binary(max_size=64), RAW_PER_METHOD * len(_methods()))
    for index, (path, method) in enumerate(_methods()):
        requests: list[Message | bytes] = [*_requests(method)]
        requests += raw[index * RAW_PER_METHOD : (index + 1) * RAW_PER_METHOD]
        for number, request in enumerate(requests):
            role = ROLES[number % len(ROLES)]
            code = await _call(
                harness.channel, path, method.server_streaming, request, _metadata(harness, role)
            )
            cases += 1
            codes[code.name] += 1
            shown = request if isinstance(request, bytes) else str(request)[:200]
            if code in NEVER:
                failures.append(f"{path} as {role} answered {code.name}: {shown!r}")
            if code is grpc.StatusCode.OK and role != "operator" and _is_write(path, request):
                failures.append(f"{path} as {role} wrote: {shown!r}")
            if (
                code is grpc.StatusCode.DEADLINE_EXCEEDED
                and not method.server_streaming
                and not path.endswith("/RepairDomainState")
            ):
                failures.append(f"{path} as {role} stalled: {shown!r}")
    assert failures == []
    policy = (
        await PolicyServiceStub(harness.channel).GetPolicy(
            policy_pb.GetPolicyRequest(), metadata=harness.viewer
        )
    ).policy
    for mode in (policy.aggressive, policy.normal, policy.defensive):
        for field, value in mode.ListFields():
            if field.name not in INT_FIELDS and field.name != "allowed_symbols":
                parse_decimal(value, field.name)  # every limit reads back
    assert codes["OK"] > 0
    with capsys.disabled():
        print(f"\nfuzz rpcs: {cases} calls over {len(_methods())} methods: {dict(codes)}")
