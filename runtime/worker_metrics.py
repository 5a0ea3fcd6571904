"""The workers' metrics on the supervisor's one Prometheus endpoint.

With ``--workers N`` the domains count in the worker processes. Each worker serves its runtime
metrics on a loopback port of its own (port 0: the OS picks) and writes that port to a file in
a directory of the run; the supervisor's endpoint, at each scrape, reads every worker's text
and serves it beside its own, each sample labelled ``worker="<index>"``, so one scrape target
shows the whole run, and a restarted worker (a new port, a new file) is found by itself.
"""

from __future__ import annotations

import contextlib
import os
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from control_plane.metrics_http import families_from_text
from runtime.core.logs import get_logger
from runtime.core.metrics import HistogramSample, MetricFamily, Sample

_log = get_logger("runtime.worker_metrics")

SCRAPE_TIMEOUT_S = 1.0
_OWN_PREFIXES = ("process_", "python_")


def write_port(path: Path, port: int) -> None:
    """Publish a worker's metrics port: written whole, then renamed into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(str(port))
    temporary.replace(path)


def read_port(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        port = int(path.read_text().strip())
        if 0 < port < 65536:
            return port
    return None


class WorkerMetrics:
    """A snapshot source: this process's families merged with every worker's."""

    def __init__(
        self, directory: Path, workers: int, own: Callable[[], Sequence[MetricFamily]]
    ) -> None:
        self.directory = directory
        self._workers = workers
        self._own = own

    def port_file(self, index: int) -> Path:
        return self.directory / f"worker-{index}.port"

    def _worker_families(self, index: int) -> list[MetricFamily]:
        port = read_port(self.port_file(index))
        if port is None:  # not started yet, or between restarts
            return []
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
                text = response.read().decode()
        except OSError as exc:
            _log.info("worker_metrics_unavailable", worker=index, url=url, error=str(exc))
            return []
        # The process and platform families are each endpoint's own (the supervisor serves
        # its process's): a worker's would repeat their names in one scrape.
        return [f for f in families_from_text(text) if not f.name.startswith(_OWN_PREFIXES)]

    def snapshot(self) -> list[MetricFamily]:
        merged: dict[str, MetricFamily] = {family.name: family for family in self._own()}
        for index in range(self._workers):
            for family in self._worker_families(index):
                labelled = _with_label(family, "worker", str(index))
                known = merged.get(family.name)
                if known is None:
                    merged[family.name] = labelled
                elif known.kind == labelled.kind:
                    merged[family.name] = replace(
                        known,
                        samples=[*known.samples, *labelled.samples],
                        histograms=[*known.histograms, *labelled.histograms],
                    )
        return list(merged.values())


def _with_label(family: MetricFamily, name: str, value: str) -> MetricFamily:
    return replace(
        family,
        samples=[Sample({**s.labels, name: value}, s.value) for s in family.samples],
        histograms=[
            HistogramSample({**h.labels, name: value}, h.buckets, h.sum, h.count)
            for h in family.histograms
        ],
    )
