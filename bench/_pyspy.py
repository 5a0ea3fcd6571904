"""Profiles of benchmark processes with py-spy, and where their CPU goes per event.

``attach(pid, path)`` starts ``py-spy record`` on a running process (collapsed stacks,
1,000 samples/s, without pausing it); it ends when the process exits. ``python -m
bench._pyspy FILE EVENTS [TOP]`` turns one such file into a table of microseconds per event
by function: *self* (the function itself running) and *total* (it or anything it called).
py-spy leaves out idle samples but counts those where the process was runnable and waiting
for a core, so on a shared machine give the process's measured CPU per event: the samples
are then scaled to it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

RATE = 1_000


def attach(pid: int, path: Path) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` into ``path``; raises when py-spy is not installed."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise FileNotFoundError("--profile needs py-spy: pip install py-spy (into .venv)")
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(RATE),
            "--format",
            "raw",
            "--function",
            "--output",
            str(path),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _frame(raw: str) -> str:
    """``name (path/to/module.py)`` -> ``module.py:name``."""
    name, _, where = raw.partition(" (")
    return f"{Path(where.rstrip(')').split(':')[0]).name}:{name}"


def per_event(path: Path, events: int) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, self samples by function, total samples by function) of one profile."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith(("thread ", "<module>"))] or frames
        samples += count
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    return samples, own, total


def table(path: Path, events: int, cpu_us: float | None = None, top: int = 15) -> str:
    """The busiest functions by total and by self time, in µs per event. With ``cpu_us``
    (the process's measured CPU per event) the samples are scaled to it: on a busy machine
    py-spy also counts time a runnable process waited for a core, which inflates every
    function alike."""
    samples, own, total = per_event(path, events)
    us = 1e6 / RATE / events
    raw = samples * us
    if cpu_us is not None and samples:
        us = cpu_us / samples
    lines = [
        f"{path.name}: {samples} samples, {raw:.2f} µs/event sampled"
        + (f", scaled to the measured {cpu_us:.2f} µs/event" if cpu_us is not None else ""),
        f"{'self µs/ev':>10} {'total µs/ev':>11}  function",
    ]
    for name, count in total.most_common(top + 10)[: top + 10]:
        lines.append(f"{own[name] * us:10.2f} {count * us:11.2f}  {name}")
    lines.append("-- top self --")
    for name, count in own.most_common(top):
        lines.append(f"{count * us:10.2f} {total[name] * us:11.2f}  {name}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print("usage: python -m bench._pyspy FILE EVENTS [CPU_US_PER_EVENT [TOP]]", file=sys.stderr)
        raise SystemExit(2)
    cpu = float(sys.argv[3]) if len(sys.argv) > 3 else None
    print(
        table(
            Path(sys.argv[1]), int(sys.argv[2]), cpu, int(sys.argv[4]) if len(sys.argv) > 4 else 15
        )
    )
