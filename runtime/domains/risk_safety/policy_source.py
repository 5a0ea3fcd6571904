"""Where risk_safety reads the live policy: anything with ``get_policy()``.

The PolicyStore's cached read is one such thing; a test passes a stub. Reading it once per
signal is what makes a policy change take effect from the next signal, with no restart.
"""

from __future__ import annotations

from typing import Protocol

from quantum.events.v1.policy_pb2 import RiskMode as RiskModePb

from runtime.core.policy import Policy, RiskMode


class PolicyReader(Protocol):
    def get_policy(self) -> Policy:
        """The current policy; cheap and local (no network)."""
        ...


def mode_to_proto(mode: RiskMode) -> RiskModePb.ValueType:
    """The wire enum value of a policy mode."""
    return RiskModePb.Value(f"RISK_MODE_{mode.value}")
