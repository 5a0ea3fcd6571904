"""All six domains on a real Redis, through the runner and a real PolicyStore.

market_data publishes ticks on the bus; ai_engine, risk_safety, execution, portfolio and
analytics run as DomainRunners in one Runtime, exactly as ``quantum run`` hosts them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.market_pb2 import MarketTick
from quantum.events.v1.policy_pb2 import RiskMode as RiskModePb
from quantum.events.v1.risk_pb2 import RejectReason

from runtime.adapters.redis.bus import ENVELOPE_FIELD, EventBus
from runtime.adapters.redis.host import Runtime
from runtime.adapters.redis.policy_store import PolicyStore
from runtime.adapters.redis.runner import RunnerConfig
from runtime.core.envelope import decode_envelope, open_payload, timestamp
from runtime.core.keys import Keyspace
from runtime.core.policy import RiskMode, TradingState
from runtime.domains.ai_engine import AiEngine, EmaCrossoverModel
from runtime.domains.analytics import Analytics
from runtime.domains.execution import Execution, PaperExchange
from runtime.domains.market_data import tick_envelope
from runtime.domains.portfolio import Portfolio
from runtime.domains.risk_safety import RiskSafety

EQUITY = Decimal("100000")
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
WITHIN_S = 15.0


@dataclass
class Pipeline:
    redis: aioredis.Redis
    keyspace: Keyspace
    store: PolicyStore
    bus: EventBus
    portfolio: Portfolio
    sequences: dict[str, int]

    async def ticks(self, symbol: str, prices: list[str], start_s: float = 0) -> None:
        """Publish ticks one second apart (event time)."""
        envelopes = []
        for i, price in enumerate(prices):
            seq = self.sequences.get(symbol, 0) + 1
            self.sequences[symbol] = seq
            tick = MarketTick(
                symbol=symbol,
                price=price,
                sequence=seq,
                observed_at=timestamp(T0 + timedelta(seconds=start_s + i)),
                source="e2e",
            )
            envelopes.append(tick_envelope(tick))
        await self.bus.publish_envelopes(envelopes)

    async def events(self, event_type: str) -> list[Any]:
        entries = await self.redis.xrange(self.keyspace.stream(event_type))
        return [open_payload(decode_envelope(fields[ENVELOPE_FIELD])) for _, fields in entries]

    async def wait_for(
        self, event_type: str, count: int = 1, where: Callable[[Any], bool] = lambda _: True
    ) -> list[Any]:
        deadline = asyncio.get_running_loop().time() + WITHIN_S
        while True:
            found = [e for e in await self.events(event_type) if where(e)]
            if len(found) >= count:
                return found
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"{count} x {event_type} not seen within {WITHIN_S}s; got {len(found)}"
                )
            await asyncio.sleep(0.02)


@pytest.fixture
async def pipeline(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> AsyncIterator[Pipeline]:
    store = PolicyStore(aredis, keyspace, state_dir=tmp_path)
    await store.start()
    portfolio = Portfolio(starting_equity=EQUITY)
    actors = [
        AiEngine(EmaCrossoverModel(fast=2, slow=4)),
        RiskSafety(store, starting_equity=EQUITY),
        Execution(PaperExchange(slippage_bps=Decimal("1"), fee_bps=Decimal("10"))),
        portfolio,
        Analytics(store),
    ]
    bus = EventBus(aredis, keyspace, producer="market_data")
    runtime = Runtime(actors, aredis, keyspace, bus, RunnerConfig(consumer_name="e2e", block_ms=20))
    task = asyncio.create_task(runtime.run())
    try:
        yield Pipeline(aredis, keyspace, store, bus, portfolio, {})
    finally:
        runtime.stop()
        await task
        await bus.close()
        await store.stop()


async def test_known_ticks_give_a_known_signal_approval_fill_position_and_pnl(
    pipeline: Pipeline,
) -> None:
    await pipeline.ticks("BTC-USD", ["50000"] * 6 + ["50500"])
    [opened] = await pipeline.wait_for("portfolio.position.opened")

    [signal] = await pipeline.events("ai.signal.generated")
    assert (signal.symbol, signal.side, signal.reference_price) == (
        "BTC-USD",
        Side.SIDE_BUY,
        "50500",
    )
    [approved] = await pipeline.events("risk.signal.approved")
    quantity = (EQUITY / 100 / Decimal(50500)).quantize(Decimal("0.000001"), ROUND_DOWN)
    assert (approved.signal_id, approved.quantity) == (signal.signal_id, "0.019801")
    assert (approved.mode, approved.policy_version) == (RiskModePb.RISK_MODE_NORMAL, 1)
    [submitted] = await pipeline.events("execution.order.submitted")
    [filled] = await pipeline.events("execution.order.filled")
    fill_price = Decimal("50505.05")  # 50,500 + 1 bp
    fee = (quantity * fill_price / 1000).quantize(Decimal("1e-8"))  # 10 bps
    assert submitted.order_id == filled.order_id
    assert (Decimal(filled.price), Decimal(filled.fee)) == (fill_price, fee)
    assert (opened.side, Decimal(opened.quantity), Decimal(opened.entry_price)) == (
        Side.SIDE_BUY,
        quantity,
        fill_price,
    )

    await pipeline.ticks("BTC-USD", ["51000"], start_s=7)
    unrealized = ((Decimal(51000) - fill_price) * quantity).quantize(Decimal("1e-8"))
    [pnl] = await pipeline.wait_for(
        "portfolio.pnl.updated", where=lambda p: Decimal(p.unrealized_pnl) == unrealized
    )
    assert Decimal(pnl.realized_pnl) == -fee
    assert Decimal(pnl.equity) == EQUITY - fee + unrealized
    assert pnl.open_positions == 1
    await pipeline.wait_for("analytics.stats.updated")
    assert await pipeline.events("risk.signal.rejected") == []


async def test_a_switch_to_defensive_mid_run_changes_the_next_decisions(
    pipeline: Pipeline,
) -> None:
    await pipeline.ticks("BTC-USD", ["50000"] * 6 + ["50500"])
    [first] = await pipeline.wait_for("risk.signal.approved")
    assert first.mode == RiskModePb.RISK_MODE_NORMAL
    assert Decimal("999") < Decimal(first.notional) <= Decimal("1000")  # 1% of equity

    await pipeline.store.switch_mode(
        RiskMode.DEFENSIVE, changed_by="operator:e2e", reason="e2e: calm down"
    )
    await pipeline.ticks("ETH-USD", ["3000"] * 6 + ["3030"], start_s=10)
    [_, second] = await pipeline.wait_for("risk.signal.approved", count=2)
    assert second.symbol == "ETH-USD"
    assert (second.mode, second.policy_version) == (RiskModePb.RISK_MODE_DEFENSIVE, 2)
    assert Decimal("499") < Decimal(second.notional) <= Decimal("500")  # 0.5% of equity


async def test_a_drawdown_makes_analytics_switch_the_policy_to_defensive(
    pipeline: Pipeline,
) -> None:
    await pipeline.store.update(
        {
            "normal.risk_per_trade_pct": Decimal(100),
            "normal.max_position_notional": Decimal(200000),
            "normal.max_daily_loss_pct": Decimal(50),
        },
        changed_by="operator:e2e",
        reason="e2e: trade big so that a crash shows",
    )
    await pipeline.ticks("BTC-USD", ["50000"] * 6 + ["50500"])
    await pipeline.wait_for("portfolio.position.opened")
    await pipeline.ticks("BTC-USD", ["44000"], start_s=7)  # -13%: past NORMAL's 10% drawdown

    deadline = asyncio.get_running_loop().time() + WITHIN_S
    while pipeline.store.get_policy().mode is not RiskMode.DEFENSIVE:
        assert asyncio.get_running_loop().time() < deadline, "no switch to DEFENSIVE"
        await asyncio.sleep(0.02)
    [latest, *_] = await pipeline.store.history(page_size=5)
    assert latest.changed_by == "analytics"
    assert latest.changed_fields == ("mode",)
    assert latest.reason.startswith("drawdown ")
    assert "passed the NORMAL limit 10%" in latest.reason
    broadcast = (await pipeline.events("policy.updated"))[-1]
    assert broadcast.changed_by == "analytics"
    assert broadcast.policy.mode == RiskModePb.RISK_MODE_DEFENSIVE


async def test_a_crash_past_three_times_the_limit_halts_trading(pipeline: Pipeline) -> None:
    await pipeline.store.update(
        {
            "normal.risk_per_trade_pct": Decimal(100),
            "normal.max_position_notional": Decimal(200000),
            "normal.max_daily_loss_pct": Decimal(50),
        },
        changed_by="operator:e2e",
        reason="e2e: trade big so that a crash shows",
    )
    await pipeline.ticks("BTC-USD", ["50000"] * 6 + ["50500"])
    await pipeline.wait_for("portfolio.position.opened")
    await pipeline.ticks("BTC-USD", ["34000"], start_s=7)  # -33%: 3.3x NORMAL's 10%

    deadline = asyncio.get_running_loop().time() + WITHIN_S
    while pipeline.store.get_policy().trading_state is not TradingState.HALTED:
        assert asyncio.get_running_loop().time() < deadline, "trading was not halted"
        await asyncio.sleep(0.02)
    history = await pipeline.store.history(page_size=5)
    assert [(r.changed_by, r.changed_fields) for r in history[:2]] == [
        ("analytics", ("trading_state",)),
        ("analytics", ("mode",)),
    ]
    assert pipeline.store.get_policy().mode is RiskMode.DEFENSIVE

    # the next decision, on a fresh symbol, is a refusal: nothing goes out while HALTED
    await pipeline.ticks("ETH-USD", ["3000"] * 6 + ["3030"], start_s=10)
    [rejected] = await pipeline.wait_for(
        "risk.signal.rejected", where=lambda r: r.symbol == "ETH-USD"
    )
    assert rejected.reason == RejectReason.REJECT_REASON_TRADING_HALTED
