"""The backtest's composition root: all six domains in one process, on the in-memory engine,
in logical time.

``run_backtest`` builds the domains as ``quantum run`` does (AiEngine, RiskSafety, Execution
with the PaperExchange, Portfolio, Analytics; market_data's CsvFeed sealed by
``tick_envelope``), runs each on the real ``DeliveryLoop`` over a ``MemoryBroker`` with a
``LogicalScheduler``, and feeds the recorded ticks as logical time reaches them. Nothing
reads the wall clock or an unseeded random source on the way to an event:

- a tick's event id and trace id derive from (seed, row, symbol, sequence); every output's
  id derives from its input's (``derive_event_id``) and carries its input's event time;
- deliveries follow (event time, append order): see ``runtime.adapters.memory.scheduler``;
- the policy starts from the documented defaults and changes only when analytics asks, at
  the logical time of the event that made it ask (``InMemoryPolicy``).

So the same CSV, seed and equity give byte-identical events every time: ``events_digest``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from quantum.events.v1.envelope_pb2 import Envelope

from runtime.adapters.memory import LogicalScheduler, MemoryBroker, MemoryRunner
from runtime.adapters.memory.broker import EventTime
from runtime.core import tracing
from runtime.core.actor import Actor
from runtime.core.delivery import RunnerConfig
from runtime.core.ids import derive_span_id, keyed_event_id, keyed_trace_id
from runtime.core.keys import Keyspace
from runtime.core.metrics import RuntimeMetrics
from runtime.core.policy.defaults import default_policy
from runtime.core.policy.memory import InMemoryPolicy
from runtime.domains.ai_engine import AiEngine
from runtime.domains.analytics import Analytics
from runtime.domains.execution import Execution, PaperExchange
from runtime.domains.market_data import CsvFeed, CsvFeedError, tick_envelope
from runtime.domains.portfolio import Portfolio
from runtime.domains.risk_safety import RiskSafety

NAMESPACE = "backtest"
# One consumer per group, and handlers that never wait on the outside world: nothing is ever
# stale, and background duties have nothing to report, so they run rarely. One grant is in
# flight at a time, so a prefetch would only wait: none.
CONFIG = RunnerConfig(
    consumer_name="backtest",
    block_ms=1_000,
    heartbeat_interval_s=60.0,
    group_stats_interval_s=60.0,
    prefetch=False,
)


@dataclass(frozen=True, slots=True)
class FeedInfo:
    """What a first pass over the CSV found (it also proves every row readable)."""

    ticks: int
    first_at: datetime
    last_at: datetime


@dataclass
class BacktestResult:
    """Everything a backtest produced: the whole event log and the final domain state."""

    broker: MemoryBroker
    feed: FeedInfo
    starting_equity: Decimal
    portfolio: Portfolio
    policy: InMemoryPolicy
    seed: int
    feed_name: str = ""

    def events(self) -> Iterator[Envelope]:
        """Every event the run stored (ticks and every domain's outputs), in append order."""
        for _, entry in self.broker.entries():
            yield Envelope.FromString(entry.data)

    def events_digest(self) -> str:
        """SHA-256 over every stored entry in order: stream name and serialized envelope,
        each length-prefixed."""
        digest = hashlib.sha256()
        for stream, entry in self.broker.entries():
            for part in (stream.encode(), entry.data):
                digest.update(len(part).to_bytes(8, "big"))
                digest.update(part)
        return digest.hexdigest()

    def portfolio_state(self) -> bytes:
        """The portfolio's final state as it snapshots it (sorted JSON)."""
        return self.portfolio.snapshot_state()

    def portfolio_digest(self) -> str:
        return hashlib.sha256(self.portfolio_state()).hexdigest()


def scan_feed(path: Path) -> FeedInfo:
    """Read the whole CSV once: a bad row fails here, before anything runs."""
    count = 0
    first: datetime | None = None
    last: datetime | None = None
    for tick in CsvFeed(path):
        at = tick.observed_at.ToDatetime(tzinfo=UTC)
        first = at if first is None or at < first else first
        last = at if last is None or at > last else last
        count += 1
    if first is None or last is None:
        raise CsvFeedError(f"{path}: no ticks after the header; a backtest needs at least one")
    return FeedInfo(count, first, last)


def recorded_ticks(path: Path, *, seed: int) -> Iterator[Envelope]:
    """The CSV's ticks sealed for the bus with ids and trace ids derived from (seed, row,
    symbol, sequence): the same file and seed always give the same envelopes."""
    for row, tick in enumerate(CsvFeed(path), start=1):
        key = f"backtest|{seed}|{row}|{tick.symbol}|{tick.sequence}"
        observed = tick.observed_at
        event_id = keyed_event_id(observed.seconds * 1000 + observed.nanos // 1_000_000, key)
        root = tracing.TraceContext(trace_id=keyed_trace_id(key), span_id=derive_span_id(key))
        envelope = tick_envelope(tick, event_id=event_id, trace=root)
        envelope.parent_span_id = ""  # a tick starts its trace
        yield envelope


def _as_datetime(at: EventTime) -> datetime:
    seconds, nanos = at
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=nanos // 1000)


def build_actors(policy: InMemoryPolicy, equity: Decimal) -> tuple[list[Actor], Portfolio]:
    """The five consuming domains, built as ``quantum run`` builds them."""
    portfolio = Portfolio(starting_equity=equity)
    actors: list[Actor] = [
        AiEngine(),
        RiskSafety(policy, starting_equity=equity),
        Execution(PaperExchange()),
        portfolio,
        Analytics(policy),
    ]
    return actors, portfolio


ActorBuilder = Callable[[InMemoryPolicy, Decimal], tuple[list[Actor], Portfolio]]


async def run_backtest(
    path: Path, *, equity: Decimal, seed: int = 0, build: ActorBuilder = build_actors
) -> BacktestResult:
    """Run the six domains over the recorded feed at ``path``; see the module doc.

    ``build`` makes the consuming domains (tests wrap one to watch it).

    Raises ``CsvFeedError`` (nothing has run then) for an unreadable feed, and re-raises what
    stopped a domain's loop.
    """
    if not equity.is_finite() or equity <= 0:
        raise ValueError(f"starting equity must be a finite amount > 0; got {equity}")
    feed = scan_feed(path)
    broker = MemoryBroker(Keyspace(NAMESPACE), logical=True)
    scheduler = broker.scheduler
    assert isinstance(scheduler, LogicalScheduler)
    policy = InMemoryPolicy(
        default_policy(at=feed.first_at), clock=lambda: _as_datetime(scheduler.now)
    )
    actors, portfolio = build(policy, equity)
    metrics = RuntimeMetrics()  # the run's own: the process-wide registry stays untouched
    loops = [MemoryRunner(actor, broker, CONFIG, metrics=metrics) for actor in actors]
    for loop in loops:  # every group exists before the first tick is appended
        await loop.subscription.open()
    tasks = [asyncio.create_task(loop.run(), name=f"backtest-{loop.domain}") for loop in loops]
    finished = asyncio.create_task(scheduler.finished.wait(), name="backtest-finished")
    try:
        scheduler.feed(recorded_ticks(path, seed=seed))
        await asyncio.wait([finished, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        scheduler.close()
        await asyncio.gather(*(loop.stop() for loop in loops))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        finished.cancel()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    if not scheduler.idle:
        raise RuntimeError("a domain stopped before every event was delivered")
    return BacktestResult(broker, feed, equity, portfolio, policy, seed, path.name)
