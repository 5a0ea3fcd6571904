"""analytics: performance statistics; asks for DEFENSIVE when drawdown limits break."""

from runtime.domains.analytics.actor import CHANGED_BY, Analytics
from runtime.domains.analytics.guard import (
    Breach,
    Escalation,
    PolicyControl,
    escalation_for,
    worst_breach,
)
from runtime.domains.analytics.stats import DailyStats

__all__ = [
    "CHANGED_BY",
    "Analytics",
    "Breach",
    "DailyStats",
    "Escalation",
    "PolicyControl",
    "escalation_for",
    "worst_breach",
]
