"""``python -m bench bus --quick`` still runs and prints its one JSON object.

A smoke test of the benchmark's plumbing (its processes, handshake, private redis-server and
report), asserting the shape of the JSON, never a speed: speed is what the benchmark reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CPU_PARTS = {"producer", "consumer", "redis", "total"}


def test_bench_bus_quick_prints_one_json_object_with_every_figure() -> None:
    # The caller's QUANTUM_* settings must not change what the benchmark runs.
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "bus", "--events", "2000", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2_000:]
    result = json.loads(done.stdout)
    for name in ("events_per_s", "baseline_events_per_s", "p50_ms", "p99_ms"):
        assert isinstance(result[name], int | float), name
        assert result[name] > 0, name
    for name in ("cpu_us_per_event", "baseline_cpu_us_per_event"):
        figures = result[name]
        assert set(figures) == CPU_PARTS, name
        assert all(figures[part] > 0 for part in CPU_PARTS), figures
        total = figures["producer"] + figures["consumer"] + figures["redis"]
        assert abs(figures["total"] - total) < 0.05, figures
    assert result["producer_api"] == "publish_many"
    assert set(result["by_producer_api"]) == {"publish_many"}
    assert set(result["by_producer_api"]["publish_many"]["gc_us_per_event"]) == {
        "producer",
        "consumer",
    }
    assert result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["latency_samples"] > 0
    assert result["engine"] == "redis"
    assert result["events"] == 2000
    assert result["payload_bytes"] == 200
    assert isinstance(result["load_average_1m"], float)
