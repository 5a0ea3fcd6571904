"""What the benchmarks share: percentiles, medians over repeats, CPU of redis-server and of
other processes, the machine's load, and the ready/go handshake of benchmark processes."""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import psutil


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by rank; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load_average_1m() -> float:
    """The machine's one-minute load average: how shared the cores were."""
    return round(os.getloadavg()[0], 2)


def redis_cpu_s(client: Any) -> float:
    """redis-server's CPU seconds so far (user + system), from INFO CPU."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_commands(client: Any, events: int) -> dict[str, dict[str, float]]:
    """Per command since the last CONFIG RESETSTAT: calls and microseconds inside Redis (the
    command itself, not reading or parsing it) per event, busiest first."""
    figures = {
        name.removeprefix("cmdstat_"): {
            "calls": round(stats["calls"] / events, 4),
            "us": round(stats["usec"] / events, 3),
        }
        for name, stats in client.info("commandstats").items()
        if name not in ("cmdstat_config", "cmdstat_info")
    }
    return dict(sorted(figures.items(), key=lambda item: -item[1]["us"]))


def process_cpu_s(pid: int) -> float:
    """The CPU seconds (user + system) process ``pid`` has used so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def median_of(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from several runs of a benchmark: the median of every number, key by key
    (nested dictionaries too); other values are taken from the first run."""
    merged: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [run[key] for run in runs if key in run]
        if isinstance(first, bool) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        ):
            merged[key] = median_of(values) if all(isinstance(v, dict) for v in values) else first
            continue
        middle = statistics.median(values)
        merged[key] = round(middle, 3) if isinstance(middle, float) else middle
    return merged


def repeated(times: int, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``measure`` ``times`` times; the median of the runs, with every run under ``runs``."""
    if times < 1:
        raise ValueError(f"--repeat must be at least 1; got {times}")
    runs = [measure() for _ in range(times)]
    if times == 1:
        return runs[0]
    return {**median_of(runs), "repeat": times, "runs": runs}


class GcClock:
    """Adds up the wall time the garbage collector runs in this process, from creation to
    ``stop`` (a collection is CPU work: this is part of the process's CPU time)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._began = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._began

    def stop(self) -> float:
        """Stop counting; the seconds spent in collections so far."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        return self.seconds


def wait_for(ready: Any, count: int, timeout_s: float = 120.0) -> None:
    """Wait until ``count`` benchmark processes put ``"ready"`` on the queue ``ready``."""
    deadline = time.monotonic() + timeout_s
    for _ in range(count):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or ready.get(timeout=remaining) != "ready":
            raise TimeoutError(f"benchmark processes were not ready within {timeout_s} s")
