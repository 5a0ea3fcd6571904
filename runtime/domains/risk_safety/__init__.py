"""risk_safety: pre-trade checks against the live policy; approves or rejects signals."""

from runtime.domains.risk_safety.actor import RiskSafety
from runtime.domains.risk_safety.book import Book, Holding
from runtime.domains.risk_safety.checks import Approval, Decision, Rejection, decide
from runtime.domains.risk_safety.policy_source import PolicyReader, mode_to_proto

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
