"""Metrics are scraped from another thread while the event loop adds label values."""

from __future__ import annotations

import sys
import threading

from runtime.core.metrics import MetricsRegistry

_LABELS = 20_000


def test_a_snapshot_while_another_thread_adds_labels_never_fails() -> None:
    registry = MetricsRegistry()
    counter = registry.counter("events_total", "events", ["key"])
    gauge = registry.gauge("lag", "lag", ["key"])
    histogram = registry.histogram("latency_seconds", "latency", ["key"])
    errors: list[BaseException] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            try:
                registry.snapshot()
            except BaseException as exc:  # the failure under test
                errors.append(exc)
                return

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: widen the race
    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for i in range(_LABELS):
            key = str(i)
            counter.labels(key).inc()
            gauge.labels(key).set(1.0)
            histogram.labels(key).observe(0.01)
            if errors:
                break
    finally:
        done.set()
        scraper.join()
        sys.setswitchinterval(previous)
    assert errors == []
    families = {family.name: family for family in registry.snapshot()}
    assert len(families["events_total"].samples) == _LABELS
