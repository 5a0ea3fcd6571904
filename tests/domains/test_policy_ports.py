"""The domains take the policy through runtime.core's ports, not copies of them."""

from __future__ import annotations

from quantum.events.v1 import policy_pb2

from runtime.core.policy import PolicyReader, PolicyWriter, RiskMode
from runtime.core.policy.codec import mode_to_proto
from runtime.domains import analytics, risk_safety
from tests.domains.support import StubPolicyStore


def test_risk_safety_reads_the_policy_through_the_core_port() -> None:
    assert risk_safety.PolicyReader is PolicyReader
    assert risk_safety.mode_to_proto is mode_to_proto  # one enum mapping, in the codec
    assert risk_safety.mode_to_proto(RiskMode.DEFENSIVE) == policy_pb2.RISK_MODE_DEFENSIVE


def test_analytics_controls_the_policy_through_the_core_ports() -> None:
    # built from the core ports (not a look-alike that could drift from them)
    assert {PolicyReader, PolicyWriter} <= set(analytics.PolicyControl.__mro__)
    assert isinstance(StubPolicyStore(), PolicyReader)
    assert isinstance(StubPolicyStore(), PolicyWriter)
