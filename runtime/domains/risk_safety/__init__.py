"""risk_safety: pre-trade checks against the live policy; approves or rejects signals."""

from runtime.core.policy.codec import mode_to_proto
from runtime.core.policy.ports import PolicyReader
from runtime.domains.risk_safety.actor import RiskSafety
from runtime.domains.risk_safety.book import Book, Holding
from runtime.domains.risk_safety.checks import Approval, Decision, Rejection, decide

__all__ = [
    "Approval",
    "Book",
    "Decision",
    "Holding",
    "PolicyReader",
    "Rejection",
    "RiskSafety",
    "decide",
    "mode_to_proto",
]
