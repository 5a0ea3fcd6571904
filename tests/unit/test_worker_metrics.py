"""The workers' metrics merged into the supervisor's: read back from Prometheus text exactly,
each sample labelled with its worker, one family per name."""

from __future__ import annotations

from pathlib import Path

from control_plane.metrics_http import families_from_text
from runtime.core.metrics import RuntimeMetrics, render_prometheus
from runtime.worker_metrics import WorkerMetrics, read_port, write_port


def _worker_metrics() -> RuntimeMetrics:
    metrics = RuntimeMetrics()
    metrics.published.inc("market.tick", amount=520)
    metrics.consumed.inc("portfolio", "market.tick", amount=519)
    metrics.handler_latency.observe("portfolio", "market.tick", value=0.0003)
    metrics.handler_latency.observe("portfolio", "market.tick", value=0.02)
    metrics.lag.set("portfolio", "s", value=4)
    return metrics


def test_prometheus_text_reads_back_to_the_same_families() -> None:
    original = _worker_metrics().snapshot()
    read = families_from_text(render_prometheus(original))
    by_name = {family.name: family for family in read}
    for family in original:
        if not family.samples and not family.histograms:
            continue  # a family with no sample is not written
        assert by_name[family.name].kind == family.kind
        assert by_name[family.name].samples == family.samples
        assert by_name[family.name].histograms == family.histograms


def test_a_port_file_holds_a_port_or_reads_as_none(tmp_path: Path) -> None:
    write_port(tmp_path / "w.port", 41234)
    assert read_port(tmp_path / "w.port") == 41234
    (tmp_path / "bad.port").write_text("99999")
    assert read_port(tmp_path / "bad.port") is None
    assert read_port(tmp_path / "missing.port") is None


def test_a_worker_without_a_port_yet_adds_nothing_and_breaks_nothing(tmp_path: Path) -> None:
    own = _worker_metrics().snapshot()
    merged = WorkerMetrics(tmp_path, 2, lambda: own).snapshot()
    assert [f.name for f in merged] == [f.name for f in own]
