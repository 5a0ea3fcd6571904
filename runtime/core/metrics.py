"""In-process metrics: counters, gauges and fixed-bucket histograms, cheap on the hot path.

The runtime counts as it works (a dict lookup and an add per event); the control plane takes
a ``snapshot()`` when scraped and renders it as Prometheus text (``render_prometheus``). No
locks: every update happens on the event loop thread, and a snapshot copies plain numbers.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]

# Seconds: from 50 µs (a trivial handler) to 10 s (a stuck one).
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)


@dataclass(frozen=True, slots=True)
class Sample:
    """One labelled value of a counter or gauge."""

    labels: dict[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class HistogramSample:
    """One labelled histogram: cumulative counts per upper bound, then sum and count."""

    labels: dict[str, str]
    buckets: tuple[tuple[float, int], ...]
    sum: float
    count: int


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """Every labelled sample of one metric, as the snapshot shows it."""

    name: str
    kind: Kind
    help: str
    samples: list[Sample] = field(default_factory=list)
    histograms: list[HistogramSample] = field(default_factory=list)


class CounterChild:
    """A counter at one set of label values; keep it to skip the lookup on the hot path."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class GaugeChild:
    """A gauge at one set of label values."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = value


class HistogramChild:
    """A histogram at one set of label values: counts per bucket, plus sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class _Family:
    def __init__(self, name: str, kind: Kind, help_text: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.kind: Kind = kind
        self.help = help_text
        self.labelnames = tuple(labelnames)

    def _check(self, values: tuple[str, ...]) -> None:
        if len(values) != len(self.labelnames):
            raise ValueError(
                f"metric {self.name} takes labels {self.labelnames}; got {len(values)} values"
            )

    def _labels(self, values: tuple[str, ...]) -> dict[str, str]:
        return dict(zip(self.labelnames, values, strict=True))


class Counter(_Family):
    """A monotonically increasing count, per label values."""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, "counter", help_text, labelnames)
        self._children: dict[tuple[str, ...], CounterChild] = {}

    def labels(self, *values: str) -> CounterChild:
        child = self._children.get(values)
        if child is None:
            self._check(values)
            child = self._children[values] = CounterChild()
        return child

    def inc(self, *values: str, amount: float = 1.0) -> None:
        self.labels(*values).value += amount

    def value(self, *values: str) -> float:
        child = self._children.get(values)
        return child.value if child is not None else 0.0

    def snapshot(self) -> MetricFamily:
        # Over a copy (dict.copy, one C call that never sees the dict change size): a scrape
        # runs in another thread while the event loop adds label values.
        return MetricFamily(
            self.name,
            self.kind,
            self.help,
            samples=[Sample(self._labels(k), c.value) for k, c in self._children.copy().items()],
        )


class Gauge(_Family):
    """A value that goes up and down (lag, pending), per label values."""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, "gauge", help_text, labelnames)
        self._children: dict[tuple[str, ...], GaugeChild] = {}

    def labels(self, *values: str) -> GaugeChild:
        child = self._children.get(values)
        if child is None:
            self._check(values)
            child = self._children[values] = GaugeChild()
        return child

    def set(self, *values: str, value: float) -> None:
        self.labels(*values).value = value

    def value(self, *values: str) -> float:
        child = self._children.get(values)
        return child.value if child is not None else math.nan

    def snapshot(self) -> MetricFamily:
        # Over a copy (dict.copy, one C call that never sees the dict change size): a scrape
        # runs in another thread while the event loop adds label values.
        return MetricFamily(
            self.name,
            self.kind,
            self.help,
            samples=[Sample(self._labels(k), c.value) for k, c in self._children.copy().items()],
        )


class Histogram(_Family):
    """Observations counted into fixed buckets (upper bounds, ascending), per label values."""

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS_S,
    ) -> None:
        super().__init__(name, "histogram", help_text, labelnames)
        bounds = tuple(float(b) for b in buckets)
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram {name} buckets must be strictly ascending: {bounds}")
        self.bounds = bounds
        self._children: dict[tuple[str, ...], HistogramChild] = {}

    def labels(self, *values: str) -> HistogramChild:
        child = self._children.get(values)
        if child is None:
            self._check(values)
            child = self._children[values] = HistogramChild(self.bounds)
        return child

    def observe(self, *values: str, value: float) -> None:
        self.labels(*values).observe(value)

    def count(self, *values: str) -> int:
        child = self._children.get(values)
        return child.count if child is not None else 0

    def snapshot(self) -> MetricFamily:
        histograms = []
        for key, child in self._children.copy().items():
            cumulative = 0
            buckets = []
            for bound, n in zip((*self.bounds, math.inf), child.counts, strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            histograms.append(
                HistogramSample(self._labels(key), tuple(buckets), child.sum, child.count)
            )
        return MetricFamily(self.name, self.kind, self.help, histograms=histograms)


class MetricsRegistry:
    """A named set of metrics; ``snapshot()`` copies them all at one moment."""

    def __init__(self) -> None:
        self._families: dict[str, Counter | Gauge | Histogram] = {}

    def _add(self, family: Counter | Gauge | Histogram) -> None:
        if family.name in self._families:
            raise ValueError(f"metric {family.name} is already registered")
        self._families[family.name] = family

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        family = Counter(name, help_text, labelnames)
        self._add(family)
        return family

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Gauge:
        family = Gauge(name, help_text, labelnames)
        self._add(family)
        return family

    def histogram(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS_S,
    ) -> Histogram:
        family = Histogram(name, help_text, labelnames, buckets)
        self._add(family)
        return family

    def snapshot(self) -> list[MetricFamily]:
        return [family.snapshot() for family in self._families.copy().values()]


# The account figures of portfolio.pnl.updated, exposed as quantum_portfolio_<name>.
PORTFOLIO_FIGURES: dict[str, str] = {
    "equity": "Account equity (account currency).",
    "peak_equity": "Highest equity so far (account currency).",
    "realized_pnl": "Realised PnL, fees included (account currency).",
    "unrealized_pnl": "Unrealised PnL at the latest marks (account currency).",
    "daily_pnl": "PnL change since the start of the trading day (account currency).",
    "exposure": "Gross exposure: the sum of |quantity x mark price| (account currency).",
    "drawdown_ratio": "Drawdown from peak equity as a fraction in [0, 1].",
    "open_positions": "Open positions.",
}


class RuntimeMetrics:
    """The process's metrics: the event bus and the actor runtime (DESIGN section 6), log
    lines, the control plane's calls, health, and the account figures."""

    def __init__(self, registry: MetricsRegistry | None = None) -> None:
        self.registry = registry or MetricsRegistry()
        r = self.registry
        self.published = r.counter(
            "quantum_events_published_total", "Events published, per event type.", ["event_type"]
        )
        self.consumed = r.counter(
            "quantum_events_consumed_total",
            "Events handled and acknowledged, per domain and event type.",
            ["domain", "event_type"],
        )
        self.skipped = r.counter(
            "quantum_events_skipped_total",
            "Events acknowledged without running the handler because they were already "
            "processed, per domain and event type.",
            ["domain", "event_type"],
        )
        self.handler_latency = r.histogram(
            "quantum_handler_latency_seconds",
            "Time a handler took, per domain and event type.",
            ["domain", "event_type"],
        )
        self.retries = r.counter(
            "quantum_handler_retries_total",
            "Handler failures that were retried, per domain and event type.",
            ["domain", "event_type"],
        )
        self.dead_letters = r.counter(
            "quantum_dead_letters_total",
            "Entries sent to the dead-letter stream, per domain and reason.",
            ["domain", "reason"],
        )
        self.lag = r.gauge(
            "quantum_consumer_lag",
            "Entries in the stream not yet delivered to the group (XINFO GROUPS lag).",
            ["group", "stream"],
        )
        self.pending = r.gauge(
            "quantum_consumer_pending",
            "Entries delivered to the group and not yet acknowledged (XINFO GROUPS pending).",
            ["group", "stream"],
        )
        self.group_stuck = r.gauge(
            "quantum_consumer_group_stuck",
            "1 when a group has not moved for the stuck horizon while behind (it no longer "
            "holds the stream's retention).",
            ["group", "stream"],
        )
        self.backpressure_waits = r.counter(
            "quantum_backpressure_waits_total",
            "Appends that waited for a stream's slowest group to make room, per stream.",
            ["stream"],
        )
        self.redis_errors = r.counter(
            "quantum_redis_errors_total",
            "Redis calls that failed and were retried, per component.",
            ["component"],
        )
        self.log_lines = r.counter(
            "quantum_log_lines_total", "Log lines written, per level.", ["level"]
        )
        # The control plane: every call of its own services, by method and status code.
        self.grpc_handled = r.counter(
            "quantum_grpc_server_handled_total",
            "gRPC calls completed by the control plane, per method and status code.",
            ["method", "code"],
        )
        self.grpc_latency = r.histogram(
            "quantum_grpc_server_handling_seconds",
            "Time the control plane took per gRPC call (to the last message), per method.",
            ["method"],
        )
        # Health, as the control plane's checks see it.
        self.redis_up = r.gauge("quantum_redis_up", "1 when Redis answers PING, else 0.")
        self.redis_ping = r.gauge(
            "quantum_redis_ping_seconds", "Round-trip time of the latest Redis PING."
        )
        self.component_health = r.gauge(
            "quantum_component_health",
            "Health per component: 0 healthy, 1 degraded, 2 critical.",
            ["component"],
        )
        # The account, from the newest portfolio.pnl.updated event.
        self.portfolio = {
            name: r.gauge(f"quantum_portfolio_{name}", text)
            for name, text in PORTFOLIO_FIGURES.items()
        }

    def snapshot(self) -> list[MetricFamily]:
        return self.registry.snapshot()


_default: RuntimeMetrics | None = None


def runtime_metrics() -> RuntimeMetrics:
    """The process-wide runtime metrics (what the control plane exposes)."""
    global _default
    if _default is None:
        _default = RuntimeMetrics()
    return _default


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_labels(labels: dict[str, str], extra: tuple[str, str] | None = None) -> str:
    items = list(labels.items()) + ([extra] if extra else [])
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def render_prometheus(families: Sequence[MetricFamily]) -> str:
    """The Prometheus text exposition format (version 0.0.4) of a snapshot."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for sample in family.samples:
            lines.append(
                f"{family.name}{_format_labels(sample.labels)} {_format_value(sample.value)}"
            )
        for hist in family.histograms:
            for bound, cumulative in hist.buckets:
                le = ("le", _format_value(bound))
                lines.append(f"{family.name}_bucket{_format_labels(hist.labels, le)} {cumulative}")
            lines.append(
                f"{family.name}_sum{_format_labels(hist.labels)} {_format_value(hist.sum)}"
            )
            lines.append(f"{family.name}_count{_format_labels(hist.labels)} {hist.count}")
    return "\n".join(lines) + "\n"
