"""The end-of-run summary counts exactly, even when streams were trimmed during the run."""

from __future__ import annotations

import redis.asyncio as aioredis
from quantum.events.v1.common_pb2 import Side
from quantum.events.v1.portfolio_pb2 import PnlUpdated
from quantum.events.v1.risk_pb2 import RejectReason, SignalRejected

from runtime.adapters.redis.operator_store import RedisOperatorStore
from runtime.core.envelope import seal
from runtime.core.keys import Keyspace
from runtime.report import RejectionTally, StreamPosition, stream_positions, summarize


async def _add(redis: aioredis.Redis, keyspace: Keyspace, payload: object, maxlen: int) -> None:
    envelope = seal(payload, producer="test", partition_key="BTC-USD")  # type: ignore[arg-type]
    await redis.xadd(
        keyspace.stream(envelope.event_type),
        {b"envelope": envelope.SerializeToString()},
        maxlen=maxlen,
        approximate=False,
    )


async def _publish_run(
    redis: aioredis.Redis, keyspace: Keyspace, tally: RejectionTally | None = None
) -> None:
    """30 rejections (10 ORDER_RATE_EXCEEDED, 20 CONFIDENCE_TOO_LOW) and two PnL updates, on
    streams trimmed to 5 entries; ``tally`` reads after each one, as a live one keeps up."""
    for i in range(30):
        reason = (
            RejectReason.REJECT_REASON_CONFIDENCE_TOO_LOW
            if i % 3
            else RejectReason.REJECT_REASON_ORDER_RATE_EXCEEDED
        )
        rejected = SignalRejected(signal_id=f"s{i}", side=Side.SIDE_BUY, reason=reason)
        await _add(redis, keyspace, rejected, maxlen=5)
        if tally is not None:
            await tally.catch_up()
    for equity in ("100000", "99950.5"):
        await _add(redis, keyspace, PnlUpdated(equity=equity, drawdown="0.0005"), maxlen=5)


async def _earlier_run(redis: aioredis.Redis, keyspace: Keyspace) -> dict[str, StreamPosition]:
    earlier = SignalRejected(signal_id="old", reason=RejectReason.REJECT_REASON_NO_PRICE)
    await _add(redis, keyspace, earlier, maxlen=5)  # from an earlier run: not counted
    return await stream_positions(RedisOperatorStore(redis, keyspace), keyspace)


async def test_counts_and_reasons_survive_trimming_and_only_this_run_counts(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    since = await _earlier_run(aredis, keyspace)
    tally = RejectionTally(RedisOperatorStore(aredis, keyspace), keyspace, since)

    await _publish_run(aredis, keyspace, tally)
    summary = await summarize(RedisOperatorStore(aredis, keyspace), keyspace, since, tally)

    assert summary.events == {"risk.signal.rejected": 30, "portfolio.pnl.updated": 2}
    assert str(summary.equity) == "99950.5"
    assert summary.rejections == {
        "REJECT_REASON_CONFIDENCE_TOO_LOW": 20,
        "REJECT_REASON_ORDER_RATE_EXCEEDED": 10,
    }
    assert summary.rejections_uncounted == 0
    assert "Quantum Trader run summary" in summary.render()


async def test_without_a_tally_the_reasons_not_retained_are_reported_as_not_read(
    aredis: aioredis.Redis, keyspace: Keyspace
) -> None:
    since = await _earlier_run(aredis, keyspace)
    await _publish_run(aredis, keyspace)

    summary = await summarize(RedisOperatorStore(aredis, keyspace), keyspace, since)

    assert summary.events == {"risk.signal.rejected": 30, "portfolio.pnl.updated": 2}
    assert str(summary.equity) == "99950.5"
    # reasons come from the entries still retained: the last five
    assert sum(summary.rejections.values()) == 5
    assert "REJECT_REASON_NO_PRICE" not in summary.rejections
    assert summary.rejections_uncounted == 25
    assert "(reason not read: trimmed first)" in summary.render()
