"""RepairDomainState: a poisoned state is rebuilt from the retained inputs, or reset; the
repair is an operator's, recorded, and bumps the domain's state epoch."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc import aio
from quantum.control.v1 import replay_service_pb2 as pb
from quantum.control.v1.replay_service_pb2_grpc import ReplayServiceStub
from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.portfolio_pb2 import PnlUpdated, PositionOpened

from clients.wire_errors import details_of
from runtime.adapters.redis.policy_store import PolicyStore
from runtime.adapters.redis.runner import state_key
from runtime.core.envelope import seal
from runtime.core.keys import Keyspace
from runtime.core.policy.model import Policy
from runtime.domains.risk_safety import RiskSafety
from tests.control_plane.conftest import Harness, start_harness, stop_harness
from tests.control_plane.test_quantumctl import json_lines, quantumctl

POISON = json.dumps(
    {
        "equity": "NaN",
        "daily_pnl": "0",
        "pnl_day": None,
        "holdings": {f"FORGED{n}": [1, "1"] for n in range(5)},
        "marks": {},
        "order_times": [],
    }
).encode()


@pytest.fixture
async def harness(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> AsyncIterator[Harness]:
    stores: list[PolicyStore] = []

    class LivePolicy:  # the harness's store, once it exists (the factory is called before)
        def get_policy(self) -> Policy:
            return stores[0].get_policy()

    def risk_safety() -> RiskSafety:  # as quantum run builds it: on the live policy
        return RiskSafety(LivePolicy())

    async with asyncio.timeout(30):
        running = await start_harness(
            aredis, keyspace, tmp_path, domain_factories={"risk_safety": risk_safety}
        )
    stores.append(running.store)
    yield running
    await stop_harness(running)


async def _inputs(h: Harness) -> None:
    """Two real opens, one forged with a NaN quantity, and a PnL report."""
    events = [
        PositionOpened(symbol="BTC-USD", side=Side.SIDE_BUY, quantity="0.1", entry_price="60000"),
        PositionOpened(symbol="ETH-USD", side=Side.SIDE_BUY, quantity="NaN", entry_price="3000"),
        PositionOpened(symbol="SOL-USD", side=Side.SIDE_SELL, quantity="2", entry_price="150"),
        PnlUpdated(equity="99000", daily_pnl="-1000"),
    ]
    await h.bus.publish_envelopes(
        [seal(event, producer="portfolio", partition_key=event.symbol) for event in events]
    )


def _rebuild(reason: str = "NaN equity in the saved state") -> pb.RepairDomainStateRequest:
    return pb.RepairDomainStateRequest(
        domain="risk_safety", mode=pb.REPAIR_MODE_REBUILD, reason=reason
    )


async def test_a_rebuild_replaces_a_poisoned_state_from_the_retained_inputs(h: Harness) -> None:
    key = state_key(h.keyspace, "risk_safety")
    await h.redis.set(key, POISON)
    await _inputs(h)
    stub = ReplayServiceStub(h.channel)
    response = await stub.RepairDomainState(_rebuild(), metadata=h.operator)
    assert response.stored
    repair = response.repair
    assert (repair.inputs_replayed, repair.inputs_refused) == (4, 1)
    assert repair.changed_by == "operator:otto"
    assert repair.state_epoch == 1
    assert repair.state_key == key
    assert "quantity" in response.refused_inputs[0]
    stored = await h.redis.get(key)
    assert isinstance(stored, bytes)
    assert b"NaN" not in stored
    assert b"FORGED" not in stored
    book = RiskSafety(h.store)
    book.restore_state(stored)
    assert book.book.equity == Decimal("99000")
    assert set(book.book.holdings) == {"BTC-USD", "SOL-USD"}
    assert await h.redis.get(h.keyspace.state_epoch("risk_safety")) == b"1"


async def test_a_reset_stores_the_state_of_a_fresh_actor(h: Harness) -> None:
    key = state_key(h.keyspace, "risk_safety")
    await h.redis.set(key, POISON)
    await _inputs(h)
    request = pb.RepairDomainStateRequest(
        domain="risk_safety", mode=pb.REPAIR_MODE_RESET, reason="start over"
    )
    response = await ReplayServiceStub(h.channel).RepairDomainState(request, metadata=h.operator)
    assert response.repair.inputs_replayed == 0
    assert await h.redis.get(key) == RiskSafety(h.store).snapshot_state()


async def test_repairs_are_recorded_newest_first(h: Harness) -> None:
    stub = ReplayServiceStub(h.channel)
    await stub.RepairDomainState(_rebuild("first"), metadata=h.operator)
    await stub.RepairDomainState(_rebuild("second"), metadata=h.operator)
    listed = await stub.ListStateRepairs(pb.ListStateRepairsRequest(), metadata=h.viewer)
    assert [(r.reason, r.state_epoch) for r in listed.repairs] == [("second", 2), ("first", 1)]
    other = await stub.ListStateRepairs(
        pb.ListStateRepairsRequest(domain="portfolio"), metadata=h.viewer
    )
    assert list(other.repairs) == []


async def test_a_dry_run_stores_nothing(h: Harness) -> None:
    key = state_key(h.keyspace, "risk_safety")
    await h.redis.set(key, POISON)
    request = _rebuild()
    request.dry_run = True
    response = await ReplayServiceStub(h.channel).RepairDomainState(request, metadata=h.operator)
    assert not response.stored
    assert await h.redis.get(key) == POISON
    assert await h.redis.get(h.keyspace.state_epoch("risk_safety")) is None


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.RepairDomainStateRequest(domain="risk_safety", mode=1), "reason"),
        (pb.RepairDomainStateRequest(domain="risk_safety", reason="x"), "mode"),
        (pb.RepairDomainStateRequest(domain="Risk Safety", mode=1, reason="x"), "domain"),
        (
            pb.RepairDomainStateRequest(
                domain="risk_safety", mode=1, reason="x", partition=2, partitions=2
            ),
            "partition",
        ),
    ],
)
async def test_bad_repair_requests_name_the_field(
    h: Harness, request_: pb.RepairDomainStateRequest, field: str
) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await ReplayServiceStub(h.channel).RepairDomainState(request_, metadata=h.operator)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.violations] == [field]


async def test_a_viewer_cannot_repair(h: Harness) -> None:
    key = state_key(h.keyspace, "risk_safety")
    await h.redis.set(key, POISON)
    with pytest.raises(aio.AioRpcError) as caught:
        await ReplayServiceStub(h.channel).RepairDomainState(_rebuild(), metadata=h.viewer)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await h.redis.get(key) == POISON


async def test_an_unknown_domain_is_not_found(h: Harness) -> None:
    request = pb.RepairDomainStateRequest(domain="nowhere", mode=1, reason="x")
    with pytest.raises(aio.AioRpcError) as caught:
        await ReplayServiceStub(h.channel).RepairDomainState(request, metadata=h.operator)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_quantumctl_repairs_and_lists(h: Harness) -> None:
    await h.redis.set(state_key(h.keyspace, "risk_safety"), POISON)
    code, out, err = await quantumctl(
        h, "--json", "state", "repair", "risk_safety", "--reason", "poisoned",
        token=h.operator_token,
    )  # fmt: skip
    assert code == 0, err
    (response,) = json_lines(out)
    assert response["stored"] is True
    assert response["repair"]["reason"] == "poisoned"
    code, out, err = await quantumctl(h, "state", "history", token=h.viewer_token)
    assert code == 0, err
    assert "risk_safety" in out
    assert "poisoned" in out


@pytest.fixture
def h(harness: Harness) -> Harness:
    return harness
