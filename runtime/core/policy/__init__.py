"""The PolicyStore: the versioned risk policy in Redis, its cache, history and snapshots."""

from runtime.core.policy.model import ModeLimits, Policy, RiskMode, TradingState

__all__ = ["ModeLimits", "Policy", "RiskMode", "TradingState"]
