"""How ``quantum run --workers N`` spreads the domains over N processes.

The domains are cut into N *contiguous* runs of the flow order, with the cut points that
balance the CPU each worker needs (the busiest worker as light as it can be):

    N=2  market_data,ai_engine,risk_safety | execution,portfolio,analytics
    N=3  market_data,ai_engine | risk_safety,execution | portfolio,analytics
    N=4  market_data | ai_engine | risk_safety,execution | portfolio,analytics

Why contiguous: a worker then consumes only what it or the workers before it produce (the
exceptions, risk_safety reading portfolio.* and everyone reading policy.updated, only update
state and produce nothing), so stopping the workers one at a time in flow order drains the
whole pipeline: each one finishes its backlog after everything upstream of it has stopped.

Why these weights: the CPU seconds each domain's process took per 1,000 ticks, measured with
one process per domain at 600 ticks/s (three symbols) on the engine of Dec 2026. The domains
that read every tick (ai_engine, execution, portfolio) dominate, mostly in the transport;
market_data pays for sealing and publishing the ticks; risk_safety and analytics see only
signals and portfolio events. Only the ratios matter, and only roughly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import combinations, pairwise

FLOW_ORDER: tuple[str, ...] = (
    "market_data",
    "ai_engine",
    "risk_safety",
    "execution",
    "portfolio",
    "analytics",
)

CPU_MS_PER_1000_TICKS: dict[str, int] = {
    "market_data": 200,
    "ai_engine": 425,
    "risk_safety": 50,
    "execution": 410,
    "portfolio": 455,
    "analytics": 30,
}


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_workers(domains: Sequence[str]) -> int:
    """One worker per usable core, at most one per domain."""
    return max(1, min(usable_cores(), len(domains)))


def assign(domains: Sequence[str], workers: int) -> list[tuple[str, ...]]:
    """Split ``domains`` into ``workers`` groups, contiguous in flow order, CPU-balanced.

    Ties (equal busiest worker) go to the more even split, then to the earlier cut points,
    so one input always yields one layout.
    """
    unknown = [d for d in domains if d not in FLOW_ORDER]
    if unknown:
        raise ValueError(f"unknown domain(s) {', '.join(unknown)}; choose from {FLOW_ORDER}")
    ordered = [d for d in FLOW_ORDER if d in set(domains)]
    if not 1 <= workers <= len(ordered):
        raise ValueError(
            f"--workers {workers}: give 1 to {len(ordered)} (each worker hosts at least one of "
            f"the {len(ordered)} domain(s) of this run)"
        )
    best: tuple[tuple[int, int], list[tuple[str, ...]]] | None = None
    for cuts in combinations(range(1, len(ordered)), workers - 1):
        bounds = (0, *cuts, len(ordered))
        groups = [tuple(ordered[a:b]) for a, b in pairwise(bounds)]
        loads = [sum(CPU_MS_PER_1000_TICKS[d] for d in group) for group in groups]
        score = (max(loads), sum(load * load for load in loads))
        if best is None or score < best[0]:
            best = (score, groups)
    assert best is not None  # at least one split exists for 1 <= workers <= len(ordered)
    return best[1]
