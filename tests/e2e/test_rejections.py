"""Every rejection reason, reached on a real Redis: risk_safety under its DomainRunner, the
live policy from a real PolicyStore, and the inputs published on the bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from google.protobuf.message import Message
from quantum.events.v1.ai_pb2 import SignalGenerated
from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.portfolio_pb2 import PnlUpdated, PositionOpened
from quantum.events.v1.risk_pb2 import RejectReason

from runtime.adapters.redis.bus import ENVELOPE_FIELD, EventBus
from runtime.adapters.redis.host import Runtime
from runtime.adapters.redis.policy_store import PolicyStore
from runtime.adapters.redis.runner import RunnerConfig
from runtime.core.envelope import decode_envelope, open_payload
from runtime.core.keys import Keyspace
from runtime.core.policy import TradingState
from runtime.domains.risk_safety import RiskSafety

WITHIN_S = 15.0
OPERATOR = "operator:e2e"


@dataclass
class Risk:
    redis: aioredis.Redis
    keyspace: Keyspace
    store: PolicyStore
    bus: EventBus
    sent: int = 0

    async def limits(self, **changes: Any) -> None:
        await self.store.update(
            {f"normal.{k}": v for k, v in changes.items()}, changed_by=OPERATOR, reason="e2e"
        )

    async def publish(self, payload: Message) -> None:
        """Publish a portfolio event and wait until risk_safety has taken it in.

        The runner keeps order within a stream, not across streams: without the wait, a
        signal published just after could be decided first.
        """
        await self.bus.publish(payload, partition_key=str(getattr(payload, "symbol", "")))
        stream = self.keyspace.stream(self.bus.registry.for_message(payload).name)
        deadline = asyncio.get_running_loop().time() + WITHIN_S
        while True:
            groups = await self.redis.xinfo_groups(stream)
            if groups and all(g["lag"] == 0 and g["pending"] == 0 for g in groups):
                return
            assert asyncio.get_running_loop().time() < deadline, f"{stream} not consumed"
            await asyncio.sleep(0.01)

    async def signal(self, symbol: str = "BTC-USD", **fields: Any) -> None:
        self.sent += 1
        values = {
            "signal_id": f"sig-{self.sent}",
            "side": Side.SIDE_BUY,
            "confidence": "0.80",
            "model_id": "e2e/1",
            "reference_price": "50000",
            **fields,
        }
        await self.bus.publish(SignalGenerated(symbol=symbol, **values), partition_key=symbol)

    async def decisions(self, count: int) -> list[Any]:
        deadline = asyncio.get_running_loop().time() + WITHIN_S
        while True:
            found = []
            for kind in ("risk.signal.approved", "risk.signal.rejected"):
                for entry_id, fields in await self.redis.xrange(self.keyspace.stream(kind)):
                    found.append((entry_id, open_payload(decode_envelope(fields[ENVELOPE_FIELD]))))
            if len(found) >= count:
                return [payload for _, payload in sorted(found, key=lambda f: f[0])]
            assert asyncio.get_running_loop().time() < deadline, f"{count} decisions not seen"
            await asyncio.sleep(0.02)


@pytest.fixture
async def risk(aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path) -> AsyncIterator[Risk]:
    store = PolicyStore(aredis, keyspace, state_dir=tmp_path)
    await store.start()
    bus = EventBus(aredis, keyspace, producer="e2e")
    runtime = Runtime(
        [RiskSafety(store)], aredis, keyspace, bus, RunnerConfig(consumer_name="e2e", block_ms=20)
    )
    task = asyncio.create_task(runtime.run())
    try:
        yield Risk(aredis, keyspace, store, bus)
    finally:
        runtime.stop()
        await task
        await bus.close()
        await store.stop()


def _opened(symbol: str, quantity: str, price: str) -> PositionOpened:
    return PositionOpened(
        symbol=symbol, side=Side.SIDE_BUY, quantity=quantity, entry_price=price, order_id="o"
    )


Setup = Callable[[Risk], Awaitable[int]]  # returns how many signals it sent


async def _halted(r: Risk) -> int:
    await r.store.set_trading_state(TradingState.HALTED, changed_by=OPERATOR, reason="e2e")
    await r.signal()
    return 1


async def _no_price(r: Risk) -> int:
    await r.signal(reference_price="")
    return 1


async def _confidence(r: Risk) -> int:
    await r.signal(confidence="0.59")
    return 1


async def _reducing(r: Risk) -> int:
    await r.store.set_trading_state(TradingState.REDUCING, changed_by=OPERATOR, reason="e2e")
    await r.signal()
    return 1


async def _symbol(r: Risk) -> int:
    await r.signal(symbol="DOGE-USD")
    return 1


async def _daily_loss(r: Risk) -> int:
    await r.publish(PnlUpdated(equity="96900", daily_pnl="-3100", symbol="BTC-USD"))
    await r.signal()
    return 1


async def _open_positions(r: Risk) -> int:
    await r.limits(max_open_positions=1)
    await r.publish(_opened("ETH-USD", "1", "3000"))
    await r.signal()
    return 1


async def _notional(r: Risk) -> int:
    await r.publish(_opened("BTC-USD", "0.5", "60000"))  # 25,000 at the signal's 50,000
    await r.signal()
    return 1


async def _leverage(r: Risk) -> int:
    await r.publish(_opened("ETH-USD", "110", "3000"))  # 330,000 on 100,000 equity
    await r.signal()
    return 1


async def _rate(r: Risk) -> int:
    await r.limits(max_orders_per_second=1)
    await r.signal("ETH-USD", reference_price="3000")
    await r.signal()
    return 2


async def _size_zero(r: Risk) -> int:
    await r.limits(risk_per_trade_pct=Decimal("0.00001"))
    await r.signal()
    return 1


SCENARIOS: dict[int, Setup] = {
    RejectReason.REJECT_REASON_TRADING_HALTED: _halted,
    RejectReason.REJECT_REASON_NO_PRICE: _no_price,
    RejectReason.REJECT_REASON_CONFIDENCE_TOO_LOW: _confidence,
    RejectReason.REJECT_REASON_REDUCING_ONLY: _reducing,
    RejectReason.REJECT_REASON_SYMBOL_NOT_ALLOWED: _symbol,
    RejectReason.REJECT_REASON_DAILY_LOSS_LIMIT_REACHED: _daily_loss,
    RejectReason.REJECT_REASON_MAX_OPEN_POSITIONS_REACHED: _open_positions,
    RejectReason.REJECT_REASON_MAX_POSITION_NOTIONAL_EXCEEDED: _notional,
    RejectReason.REJECT_REASON_MAX_LEVERAGE_EXCEEDED: _leverage,
    RejectReason.REJECT_REASON_ORDER_RATE_EXCEEDED: _rate,
    RejectReason.REJECT_REASON_ORDER_SIZE_ZERO: _size_zero,
}


def test_every_reason_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(RejectReason.values()) - {RejectReason.REJECT_REASON_UNSPECIFIED}


@pytest.mark.parametrize("reason", sorted(SCENARIOS), ids=RejectReason.Name)
async def test_reason_is_reached_on_real_redis(risk: Risk, reason: int) -> None:
    sent = await SCENARIOS[reason](risk)
    decision = (await risk.decisions(sent))[-1]
    assert RejectReason.Name(decision.reason) == RejectReason.Name(reason), decision
    assert decision.detail
    assert decision.limit
    assert decision.actual
    assert decision.policy_version == risk.store.get_policy().version
