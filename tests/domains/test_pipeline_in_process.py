"""All six domains chained in-process: a known tick sequence gives a known outcome, the
drawdown guard switches the policy, and a recorded feed replays to the same outputs."""

from __future__ import annotations

import itertools
import random
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

from quantum.events.v1.analytics_pb2 import StatsUpdated
from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.envelope_pb2 import Envelope
from quantum.events.v1.execution_pb2 import OrderFilled
from quantum.events.v1.market_pb2 import MarketTick
from quantum.events.v1.portfolio_pb2 import PnlUpdated, PositionOpened
from quantum.events.v1.risk_pb2 import RejectReason, SignalApproved, SignalRejected
from quantum.events.v2.ai_pb2 import SignalGenerated

from runtime.core.envelope import open_payload, timestamp
from runtime.core.ids import derive_event_id
from runtime.core.policy import RiskMode
from runtime.core.tracing import TraceContext
from runtime.domains.ai_engine import AiEngine, EmaCrossoverModel
from runtime.domains.analytics import Analytics
from runtime.domains.execution import Execution, PaperExchange
from runtime.domains.market_data import CsvFeed, SimulatedFeed, tick_envelope
from runtime.domains.portfolio import Portfolio
from runtime.domains.risk_safety import RiskSafety
from tests.domains.support import ROOT_ID, T0, Chain, StubPolicyStore, at, policy, run

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ticks_small.csv"
EQUITY = Decimal("100000")


def six_domains(store: StubPolicyStore, *, fast: int = 8, slow: int = 21) -> Chain:
    """The pipeline in its fixed delivery order (market_data is the feed)."""
    return Chain(
        [
            AiEngine(EmaCrossoverModel(fast=fast, slow=slow)),
            RiskSafety(store, starting_equity=EQUITY),
            Execution(PaperExchange(slippage_bps=Decimal("1"), fee_bps=Decimal("10"))),
            Portfolio(starting_equity=EQUITY),
            Analytics(store),
        ]
    )


def _tick_events(ticks: list[MarketTick]) -> list[Envelope]:
    return [
        tick_envelope(
            tick,
            event_id=derive_event_id(ROOT_ID, "feed", i),
            trace=TraceContext(trace_id=f"{i + 1:032x}", span_id=f"{i + 1:016x}"),
        )
        for i, tick in enumerate(ticks)
    ]


def _btc(prices: list[str]) -> list[MarketTick]:
    return [
        MarketTick(
            symbol="BTC-USD",
            price=p,
            sequence=i + 1,
            observed_at=timestamp(at(i)),
            source="test",
        )
        for i, p in enumerate(prices)
    ]


def _payloads(chain: Chain, event_type: str) -> list[Any]:
    return [open_payload(e) for e in chain.of_type(event_type)]


async def test_known_ticks_give_a_known_signal_approval_fill_position_and_pnl() -> None:
    store = StubPolicyStore()
    chain = six_domains(store, fast=2, slow=4)
    await chain.publish_all(_tick_events(_btc(["50000"] * 6 + ["50500", "51000"])))

    [signal] = _payloads(chain, "ai.signal.generated")
    assert (signal.symbol, signal.side, signal.reference_price) == (
        "BTC-USD",
        Side.SIDE_BUY,
        "50500",
    )

    [approved] = _payloads(chain, "risk.signal.approved")
    assert isinstance(approved, SignalApproved)
    quantity = (EQUITY / 100 / Decimal(50500)).quantize(Decimal("0.000001"), ROUND_DOWN)
    assert approved.quantity == str(quantity) == "0.019801"
    assert approved.signal_id == signal.signal_id

    [filled] = _payloads(chain, "execution.order.filled")
    assert isinstance(filled, OrderFilled)
    fill_price = Decimal(50500) * Decimal("1.0001")
    fee = (quantity * fill_price / 1000).quantize(Decimal("1e-8"))
    assert Decimal(filled.price) == fill_price == Decimal("50505.05")
    assert Decimal(filled.fee) == fee

    [opened] = _payloads(chain, "portfolio.position.opened")
    assert isinstance(opened, PositionOpened)
    assert (opened.side, Decimal(opened.quantity), Decimal(opened.entry_price)) == (
        Side.SIDE_BUY,
        quantity,
        fill_price,
    )

    pnl = _payloads(chain, "portfolio.pnl.updated")[-1]  # after the tick at 51,000
    assert isinstance(pnl, PnlUpdated)
    unrealized = (Decimal(51000) - fill_price) * quantity
    assert Decimal(pnl.realized_pnl) == -fee
    assert Decimal(pnl.unrealized_pnl) == unrealized.quantize(Decimal("1e-8"))
    assert Decimal(pnl.equity) == (EQUITY - fee + unrealized).quantize(Decimal("1e-8"))
    assert pnl.open_positions == 1

    stats = _payloads(chain, "analytics.stats.updated")
    assert stats
    assert isinstance(stats[-1], StatsUpdated)
    assert store.calls == []


async def test_a_drawdown_switches_to_defensive_and_the_next_signal_feels_it() -> None:
    store = StubPolicyStore(
        policy(
            risk_per_trade_pct=Decimal(100),
            max_position_notional=Decimal(200000),
            max_daily_loss_pct=Decimal(50),  # so that the drawdown limit is the one that breaks
        )
    )
    chain = six_domains(store, fast=2, slow=4)
    # up (BUY, 100,000 notional), then a 13% crash (drawdown past NORMAL's 10%)
    await chain.publish_all(_tick_events(_btc(["50000"] * 6 + ["50500", "44000"])))
    assert [c[:3] for c in store.calls] == [("mode", "DEFENSIVE", "analytics")]
    assert store.policy.mode is RiskMode.DEFENSIVE
    # the crash turns the model: its SELL closes the long even under DEFENSIVE...
    signals = _payloads(chain, "ai.signal.generated")
    assert [s.side for s in signals] == [Side.SIDE_BUY, Side.SIDE_SELL]
    decisions = [open_payload(e) for e in chain.log if e.event_type.startswith("risk.signal")]
    assert isinstance(decisions[-1], SignalApproved)
    assert decisions[-1].reduce_only
    # ...and a fresh BUY on another symbol is judged by DEFENSIVE's 0.75 minimum
    eth = MarketTick(symbol="ETH-USD", price="3000", sequence=1, observed_at=timestamp(at(9)))
    risk = chain.actors[1]
    signal = SignalGenerated(
        signal_id="s-eth", symbol="ETH-USD", side=Side.SIDE_BUY, reference_price="3000"
    )
    signal.confidence.value = "0.70"
    await chain.publish(tick_envelope(eth))
    [decision] = await run(risk, signal, when=at(10))
    assert isinstance(decision, SignalRejected)
    assert decision.reason == RejectReason.REJECT_REASON_CONFIDENCE_TOO_LOW
    assert decision.limit == "0.75"


async def _replay_fixture() -> tuple[str, Chain]:
    chain = six_domains(StubPolicyStore())
    await chain.publish_all(_tick_events(list(CsvFeed(FIXTURE))))
    return chain.digest(), chain


async def test_a_recorded_feed_replays_to_identical_outputs() -> None:
    first, chain = await _replay_fixture()
    second, _ = await _replay_fixture()
    assert first == second
    kinds = {e.event_type for e in chain.log}
    assert kinds >= {
        "market.tick",
        "ai.signal.generated",
        "risk.signal.approved",
        "risk.signal.rejected",
        "execution.order.submitted",
        "execution.order.filled",
        "portfolio.position.opened",
        "portfolio.position.closed",
        "portfolio.pnl.updated",
        "analytics.stats.updated",
    }


async def test_the_digest_tells_different_inputs_apart() -> None:
    first, _ = await _replay_fixture()
    chain = six_domains(StubPolicyStore())
    ticks = list(CsvFeed(FIXTURE))
    ticks[300].price = str(Decimal(ticks[300].price) * 2)
    await chain.publish_all(_tick_events(ticks))
    assert chain.digest() != first


async def test_a_seeded_simulation_replays_to_identical_outputs() -> None:
    async def once() -> str:
        feed = SimulatedFeed.for_symbols(
            ["BTC-USD", "ETH-USD", "SOL-USD"], seed=42, start=T0, rate=50
        )
        chain = six_domains(StubPolicyStore())
        await chain.publish_all(_tick_events(list(itertools.islice(feed, 1500))))
        assert chain.of_type("execution.order.filled")
        return chain.digest()

    assert await once() == await once()
    assert random.Random(42).random() == random.Random(42).random()  # no global state used
