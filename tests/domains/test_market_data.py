"""market_data: the simulated and recorded feeds, pacing and sealing."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from runtime.domains.market_data import (
    CsvFeed,
    CsvFeedError,
    SimulatedFeed,
    paced,
    paced_batches,
    tick_envelope,
    tick_time,
)
from tests.domains.support import T0

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ticks_small.csv"


def _feed(seed: int, rate: float = 10.0) -> SimulatedFeed:
    return SimulatedFeed(
        {"BTC-USD": Decimal("60000"), "ETH-USD": Decimal("3000")},
        rng=random.Random(seed),
        start=T0,
        rate=rate,
    )


def test_simulated_feed_is_the_same_for_the_same_seed() -> None:
    first = [t.SerializeToString() for t in itertools.islice(_feed(7), 200)]
    again = [t.SerializeToString() for t in itertools.islice(_feed(7), 200)]
    other = [t.SerializeToString() for t in itertools.islice(_feed(8), 200)]
    assert first == again
    assert first != other


def test_simulated_feed_alternates_symbols_with_sequences_and_spacing() -> None:
    ticks = list(itertools.islice(_feed(1, rate=4.0), 6))
    assert [t.symbol for t in ticks] == ["BTC-USD", "ETH-USD"] * 3
    assert [t.sequence for t in ticks] == [1, 1, 2, 2, 3, 3]
    assert [tick_time(t) for t in ticks] == [T0 + timedelta(seconds=i / 4) for i in range(6)]
    for tick in ticks:
        price = Decimal(tick.price)
        assert price > 0
        assert price == price.quantize(Decimal("0.01"))
        assert Decimal(tick.bid) < price < Decimal(tick.ask)
        assert tick.source == "sim"


def test_simulated_prices_walk_from_their_start() -> None:
    ticks = list(itertools.islice(_feed(3), 1000))
    btc = [Decimal(t.price) for t in ticks if t.symbol == "BTC-USD"]
    assert len(set(btc)) > 100  # it moves
    assert Decimal("30000") < btc[-1] < Decimal("120000")  # but as a random walk, not wildly


def test_for_symbols_uses_default_prices_and_fallback() -> None:
    feed = SimulatedFeed.for_symbols(["BTC-USD", "XYZ-USD"], seed=1, start=T0)
    btc, xyz = feed.next_tick(), feed.next_tick()
    assert Decimal("59000") < Decimal(btc.price) < Decimal("61000")
    assert Decimal("99") < Decimal(xyz.price) < Decimal("101")


def test_simulated_feed_refuses_a_naive_start_and_bad_rate() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        SimulatedFeed({"A": Decimal(1)}, rng=random.Random(1), start=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="rate"):
        SimulatedFeed({"A": Decimal(1)}, rng=random.Random(1), start=T0, rate=0)


def test_csv_feed_reads_the_recorded_file() -> None:
    ticks = list(CsvFeed(FIXTURE))
    assert len(ticks) > 100
    first = ticks[0]
    assert first.source == "file:ticks_small.csv"
    assert first.sequence == 1
    by_symbol: dict[str, list[int]] = {}
    for tick in ticks:
        by_symbol.setdefault(tick.symbol, []).append(tick.sequence)
    for sequences in by_symbol.values():
        assert sequences == list(range(1, len(sequences) + 1))


def test_csv_feed_takes_iso_and_epoch_times(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "time,symbol,price,volume\n"
        "2026-11-23T09:00:00,BTC-USD,100.5,1\n"
        "1795424401.5,BTC-USD,101,2\n"
        "2026-11-23T10:00:02+01:00,ETH-USD,7,0\n"
    )
    ticks = list(CsvFeed(path))
    assert [tick_time(t) for t in ticks] == [
        datetime(2026, 11, 23, 9, 0, tzinfo=UTC),
        datetime.fromtimestamp(1795424401.5, UTC),
        datetime(2026, 11, 23, 9, 0, 2, tzinfo=UTC),
    ]
    assert [(t.symbol, t.price, t.sequence) for t in ticks] == [
        ("BTC-USD", "100.5", 1),
        ("BTC-USD", "101", 2),
        ("ETH-USD", "7", 1),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("time,symbol,price\n", "missing column"),
        ("time,symbol,price,volume\nnope,BTC-USD,1,1\n", r"t.csv:2: time 'nope'"),
        ("time,symbol,price,volume\n1,BTC-USD,abc,1\n", r"t.csv:2: price 'abc'"),
        ("time,symbol,price,volume\n1,BTC-USD,-1,1\n", r"t.csv:2: price '-1' must be greater"),
        ("time,symbol,price,volume\n1,BTC-USD,1_000,1\n", r"t.csv:2: price '1_000' must be"),
        ("time,symbol,price,volume\n1,BTC-USD,NaN,1\n", r"t.csv:2: price 'NaN' must be a finite"),
        ("time,symbol,price,volume\n1,BTC-USD,1e999,1\n", r"t.csv:2: price '1e999' must be"),
        ("time,symbol,price,volume\n1,BTC-USD,\u0661,1\n", r"t.csv:2: price '\u0661' must be"),
        ("time,symbol,price,volume\n1,BTC-USD,1,-2\n", r"t.csv:2: volume '-2' must be at least"),
        ("time,symbol,price,volume\ninf,BTC-USD,1,1\n", r"t.csv:2: time 'inf'"),
        ("time,symbol,price,volume\n1e19,BTC-USD,1,1\n", r"t.csv:2: time '1e19' is outside"),
        ("time,symbol,price,volume\n0001-01-01,BTC-USD,1,1\n", r"t.csv:2: time .* is outside"),
        ("time,symbol,price,volume\n1,BTC\tUSD,1,1\n", r"t.csv:2: symbol"),
        ("time,symbol,price,volume\n1,,1,1\n", r"t.csv:2: empty symbol"),
    ],
)
def test_csv_feed_errors_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(CsvFeedError, match=message):
        list(CsvFeed(path))


def test_csv_feed_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CsvFeedError, match="does not exist"):
        CsvFeed(tmp_path / "missing.csv")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_paced_follows_recorded_time_scaled_by_speed() -> None:
    clock = FakeClock()
    ticks = itertools.islice(_feed(1, rate=10.0), 5)  # 0.1 s apart
    out = [tick async for _, tick in paced(ticks, speed=2.0, sleep=clock.sleep, clock=clock)]
    assert len(out) == 5
    assert clock.now == pytest.approx(0.2)  # 0.4 s of recorded time at double speed
    assert all(s == pytest.approx(0.05) for s in clock.sleeps)


async def test_paced_as_fast_as_possible_with_a_limit() -> None:
    clock = FakeClock()
    out = [
        at async for at, _ in paced(_feed(1), speed=None, limit=300, sleep=clock.sleep, clock=clock)
    ]
    assert len(out) == 300
    assert clock.now == 0.0
    assert out == sorted(out)


async def test_paced_refuses_a_non_positive_speed() -> None:
    with pytest.raises(ValueError, match="speed"):
        async for _ in paced([], speed=0):
            pass


async def test_paced_batches_groups_what_is_due_and_keeps_the_pace() -> None:
    clock = FakeClock()
    ticks = list(itertools.islice(_feed(1, rate=10.0), 10))  # 0.1 s apart
    batches = [
        batch async for batch in paced_batches(ticks, speed=1.0, sleep=clock.sleep, clock=clock)
    ]
    assert [t for batch in batches for t in batch] == ticks
    assert clock.now == pytest.approx(0.9)
    fast = [b async for b in paced_batches(ticks, speed=None, max_batch=4, sleep=clock.sleep)]
    assert [len(b) for b in fast] == [4, 4, 2]


async def test_paced_batches_sends_a_backlog_at_once() -> None:
    clock = FakeClock()
    ticks = list(itertools.islice(_feed(1, rate=10.0), 6))

    async def slow_consumer() -> list[int]:
        sizes = []
        async for batch in paced_batches(ticks, speed=1.0, sleep=clock.sleep, clock=clock):
            sizes.append(len(batch))
            clock.now += 0.35  # the publisher lagged: the ticks due meanwhile come together
        return sizes

    sizes = await slow_consumer()
    assert sum(sizes) == 6
    assert max(sizes) > 1


def test_tick_envelope_is_keyed_by_symbol_and_timed_by_observation() -> None:
    tick = _feed(1).next_tick()
    env = tick_envelope(tick)
    assert env.event_type == "market.tick"
    assert env.partition_key == "BTC-USD"
    assert env.producer == "market_data"
    assert env.occurred_at.ToDatetime(tzinfo=UTC) == T0
