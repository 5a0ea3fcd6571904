"""A replay never changes live trading: the domains the control plane replays through are
given the live policy to read, and writes that are not applied."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import redis.asyncio as aioredis
from quantum.events.v1.portfolio_pb2 import PnlUpdated

from runtime.adapters.redis.policy_store import PolicyStore
from runtime.bootstrap import ReplayPolicy, actor_factories
from runtime.core.actor import deliver
from runtime.core.envelope import seal
from runtime.core.keys import Keyspace
from runtime.core.policy import RiskMode, TradingState


async def test_replayed_drawdown_leaves_the_live_policy_alone(
    aredis: aioredis.Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    store = PolicyStore(aredis, keyspace, state_dir=tmp_path)
    await store.start()
    try:
        before = store.get_policy()
        crash = PnlUpdated(equity="50000", drawdown="0.5", daily_pnl="-50000", symbol="BTC-USD")
        envelope = seal(crash, producer="portfolio", partition_key="BTC-USD")

        replayed = actor_factories(ReplayPolicy(store), Decimal(100_000))["analytics"]()
        await deliver(replayed, envelope)

        history = await store.history(page_size=10)
        assert [record.version for record in history] == [before.version]
        assert store.get_policy().mode == before.mode == RiskMode.NORMAL

        # the same event through the live wiring does switch: the test can tell them apart
        live = actor_factories(store, Decimal(100_000))["analytics"]()
        await deliver(live, envelope)
        after = store.get_policy()
        assert after.version > before.version
        assert after.mode == RiskMode.DEFENSIVE or after.trading_state != TradingState.ACTIVE
    finally:
        await store.stop()
