"""Every RPC's auth rule: no token, a viewer token and an operator token."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from quantum.control.v1 import policy_service_pb2 as policy_pb
from quantum.control.v1 import replay_service_pb2 as replay_pb
from quantum.control.v1 import runtime_service_pb2 as runtime_pb
from quantum.control.v1 import trace_service_pb2 as trace_pb
from quantum.control.v1.policy_service_pb2_grpc import PolicyServiceStub
from quantum.control.v1.replay_service_pb2_grpc import ReplayServiceStub
from quantum.control.v1.runtime_service_pb2_grpc import RuntimeServiceStub
from quantum.control.v1.trace_service_pb2_grpc import TraceServiceStub
from quantum.events.v1 import policy_pb2

from clients.wire_errors import details_of
from control_plane.auth import METHOD_ROLES, Role, TokenConfigError, TokenTable, required_role
from control_plane.config import ConfigError, check_exposure
from tests.control_plane.conftest import Harness

TICKS = replay_pb.EventRange(event_type="market.tick")
AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}

# (stub class, method, request, streaming, the role it needs)
RPCS: list[tuple[type, str, Message, bool, Role]] = [
    (PolicyServiceStub, "GetPolicy", policy_pb.GetPolicyRequest(), False, Role.VIEWER),
    (
        PolicyServiceStub,
        "SwitchMode",
        policy_pb.SwitchModeRequest(mode=policy_pb2.RISK_MODE_DEFENSIVE, reason="auth"),
        False,
        Role.OPERATOR,
    ),
    (
        PolicyServiceStub,
        "UpdatePolicy",
        policy_pb.UpdatePolicyRequest(
            policy=policy_pb2.Policy(trading_state=policy_pb2.TRADING_STATE_REDUCING),
            update_mask=FieldMask(paths=["trading_state"]),
            reason="auth",
        ),
        False,
        Role.OPERATOR,
    ),
    (PolicyServiceStub, "WatchPolicy", policy_pb.WatchPolicyRequest(), True, Role.VIEWER),
    (
        PolicyServiceStub,
        "ListPolicyHistory",
        policy_pb.ListPolicyHistoryRequest(),
        False,
        Role.VIEWER,
    ),
    (TraceServiceStub, "GetTrace", trace_pb.GetTraceRequest(trace_id="a" * 32), False, Role.VIEWER),
    (TraceServiceStub, "SubscribeTraces", trace_pb.SubscribeTracesRequest(), True, Role.VIEWER),
    (ReplayServiceStub, "ReadEvents", replay_pb.ReadEventsRequest(range=TICKS), True, Role.VIEWER),
    (
        ReplayServiceStub,
        "ReplayToDomain",
        replay_pb.ReplayToDomainRequest(domain="tick_counter", range=TICKS),
        True,
        Role.VIEWER,
    ),
    (
        ReplayServiceStub,
        "ReplayToDomain",
        replay_pb.ReplayToDomainRequest(domain="tick_counter", range=TICKS, publish=True),
        True,
        Role.OPERATOR,
    ),
    (
        ReplayServiceStub,
        "ListDeadLetters",
        replay_pb.ListDeadLettersRequest(domain="tick_counter"),
        False,
        Role.VIEWER,
    ),
    (
        ReplayServiceStub,
        "RedriveDeadLetters",
        replay_pb.RedriveDeadLettersRequest(domain="tick_counter"),
        False,
        Role.OPERATOR,
    ),
    (
        ReplayServiceStub,
        "PurgeDeadLetters",
        replay_pb.PurgeDeadLettersRequest(domain="tick_counter", all=True),
        False,
        Role.OPERATOR,
    ),
    (
        ReplayServiceStub,
        "RepairDomainState",
        replay_pb.RepairDomainStateRequest(
            domain="tick_counter", mode=replay_pb.REPAIR_MODE_RESET, reason="auth"
        ),
        False,
        Role.OPERATOR,
    ),
    (
        ReplayServiceStub,
        "ListStateRepairs",
        replay_pb.ListStateRepairsRequest(),
        False,
        Role.VIEWER,
    ),
    (
        RuntimeServiceStub,
        "GetSystemHealth",
        runtime_pb.GetSystemHealthRequest(),
        False,
        Role.VIEWER,
    ),
    (RuntimeServiceStub, "ListDomains", runtime_pb.ListDomainsRequest(), False, Role.VIEWER),
]


async def call(
    h: Harness, stub_class: type, method: str, request: Message, streaming: bool, role: str
) -> grpc.StatusCode:
    """The status code of one call (OK, or the code it failed with)."""
    stub: Any = stub_class(h.channel)
    try:
        if streaming:
            stream = getattr(stub, method)(request, metadata=h.as_role(role), timeout=1.0)
            await stream.read()
            stream.cancel()
        else:
            await getattr(stub, method)(request, metadata=h.as_role(role), timeout=5.0)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("stub_class", "method", "request_message", "streaming", "needed"),
    RPCS,
    ids=[f"{m}-{n.name.lower()}" for _, m, _, _, n in RPCS],
)
async def test_each_rpc_enforces_its_role(
    harness: Harness,
    stub_class: type,
    method: str,
    request_message: Message,
    streaming: bool,
    needed: Role,
) -> None:
    assert await call(harness, stub_class, method, request_message, streaming, "none") == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    viewer = await call(harness, stub_class, method, request_message, streaming, "viewer")
    if needed is Role.OPERATOR:
        assert viewer == grpc.StatusCode.PERMISSION_DENIED
    else:
        assert viewer not in AUTH_CODES
    operator = await call(harness, stub_class, method, request_message, streaming, "operator")
    assert operator not in AUTH_CODES


async def test_an_unknown_token_is_unauthenticated_with_a_reason(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await PolicyServiceStub(harness.channel).GetPolicy(
            policy_pb.GetPolicyRequest(), metadata=(("authorization", "Bearer not-a-token"),)
        )
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.UNAUTHENTICATED
    assert details.reason == "TOKEN_INVALID"


async def test_a_viewer_is_told_which_role_a_write_needs(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await PolicyServiceStub(harness.channel).SwitchMode(
            policy_pb.SwitchModeRequest(mode=policy_pb2.RISK_MODE_DEFENSIVE, reason="x"),
            metadata=harness.viewer,
        )
    details = details_of(caught.value)
    assert details.reason == "ROLE_INSUFFICIENT"
    assert details.metadata["required_role"] == "operator"
    assert harness.store.get_policy().version == 1


async def test_health_is_open_without_a_token(harness: Harness) -> None:
    response = await health_pb2_grpc.HealthStub(harness.channel).Check(
        health_pb2.HealthCheckRequest(service="")
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_every_method_of_every_service_has_a_known_rule() -> None:
    assert required_role("/grpc.health.v1.Health/Check") is None
    assert required_role("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is None
    # The method's rule is the least role any of its rows needs (a body may demand more).
    expected: dict[str, Role] = {}
    for stub, name, _, _, role in RPCS:
        key = f"{stub.__name__.removesuffix('Stub')}/{name}"
        expected[key] = min(role, expected.get(key, role))
    served: set[str] = set()
    for module in (policy_pb, replay_pb, runtime_pb, trace_pb):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                served.add(path)
                # Listed explicitly: an unclassified method would fall back to OPERATOR.
                assert path in METHOD_ROLES, f"{path} has no entry in METHOD_ROLES"
                key = f"{service.name}/{method.name}"
                assert key in expected, f"{path} is not exercised by RPCS in this file"
                assert required_role(path) is expected[key], path
    assert served == set(METHOD_ROLES)


def test_a_method_without_a_rule_needs_the_operator_role() -> None:
    assert required_role("/quantum.control.v1.PolicyService/DeleteEverything") is Role.OPERATOR
    assert required_role("/quantum.control.v2.NewService/Anything") is Role.OPERATOR


def test_tokens_parse_from_the_environment_and_a_file(tmp_path: Any) -> None:
    token_a, token_b = "a" * 20, "b" * 20
    table = TokenTable.from_env(
        {"QUANTUM_TOKENS": f"alice:operator:{token_a}, bob:viewer:{token_b}"}
    )
    assert table.authenticate(token_a) is not None
    assert table.authenticate(token_a).changed_by == "operator:alice"  # type: ignore[union-attr]
    assert table.authenticate(token_b).role is Role.VIEWER  # type: ignore[union-attr]
    assert table.authenticate("c" * 20) is None
    path = tmp_path / "tokens"
    path.write_text(f"# ops\nalice:operator:{token_a}\n")
    assert len(TokenTable.from_env({"QUANTUM_TOKENS_FILE": str(path)})) == 1


@pytest.mark.parametrize(
    "text",
    [
        "alice:admin:" + "a" * 20,
        "alice:viewer",
        "alice:viewer:short",
        f"a:viewer:{'x' * 20},b:viewer:{'x' * 20}",
    ],
)
def test_bad_token_entries_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(TokenConfigError):
        TokenTable.parse(text)


def test_a_non_loopback_address_without_tokens_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0:50051"):
        check_exposure("0.0.0.0:50051", tokens_enabled=False)
    check_exposure("0.0.0.0:50051", tokens_enabled=True)
    check_exposure("127.0.0.1:50051", tokens_enabled=False)
    check_exposure("[::1]:50051", tokens_enabled=False)


@pytest.mark.parametrize(
    ("stub_class", "method", "streaming"),
    sorted({(s, m, st) for s, m, _, st, _ in RPCS}, key=lambda r: r[1]),
    ids=sorted({m for _, m, _, _, _ in RPCS}),
)
async def test_empty_requests_are_never_unknown_or_internal(
    harness: Harness, stub_class: type, method: str, streaming: bool
) -> None:
    request_class = type(next(r for s, m, r, _, _ in RPCS if m == method))
    code = await call(harness, stub_class, method, request_class(), streaming, "operator")
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


async def test_a_request_body_that_does_not_parse_is_invalid_argument(harness: Harness) -> None:
    raw = harness.channel.unary_unary(
        "/quantum.control.v1.PolicyService/SwitchMode",
        request_serializer=lambda body: body,
        response_deserializer=lambda body: body,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(b"\xff\xff\xff\xff", metadata=harness.operator)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.violations[0].field == "(request)"
    # Without a token the body is not even looked at.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(b"\xff\xff\xff\xff")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
