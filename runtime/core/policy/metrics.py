"""The PolicyStore's metrics, in the runtime's registry (served as Prometheus text).

Reads are not counted: every read is a cache hit by construction (there is no miss path),
and a counter would double the cost of ``get_policy()``. What is counted is how the cache
is kept current and how writes end.
"""

from __future__ import annotations

import weakref

from runtime.core.metrics import MetricsRegistry, runtime_metrics


class PolicyMetrics:
    """Counters and a latency histogram for one registry (shared by every store in it)."""

    def __init__(self, registry: MetricsRegistry) -> None:
        self.writes = registry.counter(
            "quantum_policy_writes_total",
            "Policy writes by outcome: written, unchanged, conflict, invalid, unavailable.",
            ["outcome"],
        )
        self.write_latency = registry.histogram(
            "quantum_policy_write_latency_seconds",
            "Time a policy write took, from the call to the cache holding the new version.",
        )
        self.cache_updates = registry.counter(
            "quantum_policy_cache_updates_total",
            "New policy versions taken into the cache, by source: write, event, redis.",
            ["source"],
        )


_by_registry: weakref.WeakKeyDictionary[MetricsRegistry, PolicyMetrics] = (
    weakref.WeakKeyDictionary()
)


def policy_metrics(registry: MetricsRegistry | None = None) -> PolicyMetrics:
    """The policy metrics of ``registry`` (default: the process-wide runtime registry)."""
    registry = registry or runtime_metrics().registry
    found = _by_registry.get(registry)
    if found is None:
        found = _by_registry[registry] = PolicyMetrics(registry)
    return found
