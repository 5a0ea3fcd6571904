"""The Prometheus text endpoint: the runtime's metrics and the policy figures.

A collector translates ``runtime.core.metrics`` snapshots into prometheus-client families at
scrape time, so the hot path keeps its own cheap counters and pays nothing for the endpoint.
It serves from a thread of prometheus-client, on 127.0.0.1:9464 unless configured otherwise,
beside prometheus-client's own process (CPU, memory, open files) and platform collectors.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from runtime.core.metrics import HistogramSample, MetricFamily, Sample, runtime_metrics
from runtime.core.policy.model import Policy, RiskMode, TradingState

DEFAULT_METRICS_ADDR = "127.0.0.1:9464"

SnapshotSource = Callable[[], Sequence[MetricFamily]]


def _bound(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(value)


def to_prometheus(family: MetricFamily) -> Metric:
    """One runtime metric family as a prometheus-client family."""
    label_names = sorted(
        {name for s in family.samples for name in s.labels}
        | {name for h in family.histograms for name in h.labels}
    )
    if family.kind == "histogram":
        histogram = HistogramMetricFamily(family.name, family.help, labels=label_names)
        for h in family.histograms:
            histogram.add_metric(
                [h.labels.get(n, "") for n in label_names],
                buckets=[(_bound(bound), float(count)) for bound, count in h.buckets],
                sum_value=h.sum,
            )
        return histogram
    metric: CounterMetricFamily | GaugeMetricFamily
    if family.kind == "counter":
        metric = CounterMetricFamily(family.name, family.help, labels=label_names)
    else:
        metric = GaugeMetricFamily(family.name, family.help, labels=label_names)
    for sample in family.samples:
        metric.add_metric([sample.labels.get(n, "") for n in label_names], sample.value)
    return metric


def families_from_text(text: str) -> list[MetricFamily]:
    """Runtime metric families read back from Prometheus text (what ``to_prometheus``
    wrote, as another process serves it): counters, gauges and histograms."""
    families: list[MetricFamily] = []
    for parsed in text_string_to_metric_families(text):
        if parsed.type == "counter":
            samples = [
                Sample(dict(s.labels), s.value) for s in parsed.samples if s.name.endswith("_total")
            ]
            families.append(
                MetricFamily(parsed.name + "_total", "counter", parsed.documentation, samples)
            )
        elif parsed.type == "gauge":
            samples = [Sample(dict(s.labels), s.value) for s in parsed.samples]
            families.append(MetricFamily(parsed.name, "gauge", parsed.documentation, samples))
        elif parsed.type == "histogram":
            families.append(_histogram_from(parsed))
    return families


def _histogram_from(parsed: Metric) -> MetricFamily:
    buckets: dict[tuple[tuple[str, str], ...], list[tuple[float, int]]] = {}
    sums: dict[tuple[tuple[str, str], ...], float] = {}
    counts: dict[tuple[tuple[str, str], ...], int] = {}
    for sample in parsed.samples:
        labels = {k: v for k, v in sample.labels.items() if k != "le"}
        key = tuple(sorted(labels.items()))
        if sample.name.endswith("_bucket"):
            buckets.setdefault(key, []).append((float(sample.labels["le"]), int(sample.value)))
        elif sample.name.endswith("_sum"):
            sums[key] = sample.value
        elif sample.name.endswith("_count"):
            counts[key] = int(sample.value)
    histograms = [
        HistogramSample(dict(key), tuple(sorted(bounds)), sums.get(key, 0.0), counts.get(key, 0))
        for key, bounds in buckets.items()
    ]
    return MetricFamily(parsed.name, "histogram", parsed.documentation, histograms=histograms)


class RuntimeCollector(Collector):
    """Collects the runtime's metrics and, when given a policy reader, the policy figures."""

    def __init__(
        self,
        snapshot: SnapshotSource | None = None,
        policy: Callable[[], Policy] | None = None,
    ) -> None:
        self._snapshot = snapshot or (lambda: runtime_metrics().snapshot())
        self._policy = policy

    def collect(self) -> Iterator[Metric]:
        for family in self._snapshot():
            yield to_prometheus(family)
        if self._policy is None:
            return
        policy = self._policy()
        yield GaugeMetricFamily(
            "quantum_policy_version", "The version of the policy in force.", value=policy.version
        )
        mode = GaugeMetricFamily(
            "quantum_policy_mode",
            "1 for the risk mode in force, 0 for the others.",
            labels=["mode"],
        )
        for each in RiskMode:
            mode.add_metric([each.value], 1.0 if each is policy.mode else 0.0)
        yield mode
        state = GaugeMetricFamily(
            "quantum_policy_trading_state",
            "1 for the trading state in force, 0 for the others.",
            labels=["state"],
        )
        for each_state in TradingState:
            state.add_metric([each_state.value], 1.0 if each_state is policy.trading_state else 0.0)
        yield state
        limits = policy.active_limits
        yield GaugeMetricFamily(
            "quantum_policy_max_drawdown_ratio",
            "The active mode's drawdown limit as a fraction of peak equity.",
            value=float(limits.max_drawdown_pct) / 100,
        )


class MetricsEndpoint:
    """The HTTP endpoint; ``start`` binds it, ``stop`` closes it."""

    def __init__(self, addr: str, collector: RuntimeCollector) -> None:
        host, _, port = addr.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        self.port = int(port)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server, self._thread = start_http_server(
            self.port, addr=self.host, registry=self.registry
        )
        self.port = self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
