"""What to do next after a failed call: one line naming the flag, variable or command."""

from __future__ import annotations

import grpc

from clients.wire_errors import ErrorDetails

START_SERVER = (
    "start it with 'quantum run' (the pipeline with its control plane) or "
    "'quantum control-plane' (the control plane alone), or point --addr / QUANTUM_ADDR at it"
)


def hint_for(details: ErrorDetails, addr: str, timeout_s: float) -> str:
    """A hint for ``details`` from the control plane at ``addr``; "" when the message says
    enough already."""
    reason, code = details.reason, details.code
    if reason == "TOKEN_MISSING":
        return f"the control plane at {addr} needs a token: pass --token TOKEN or set QUANTUM_TOKEN"
    if reason == "TOKEN_INVALID":
        return (
            f"the control plane at {addr} does not know this token: check --token / "
            "QUANTUM_TOKEN against the server's QUANTUM_TOKENS"
        )
    if reason == "ROLE_INSUFFICIENT":
        needed = details.metadata.get("required_role", "operator")
        return f"this needs a token with the {needed} role: pass one with --token or QUANTUM_TOKEN"
    if reason == "DOMAIN_UNKNOWN":
        known = details.metadata.get("known_domains", "")
        return f"known domains: {known.replace(',', ', ')}" if known else ""
    if code == grpc.StatusCode.UNAVAILABLE and not reason:
        return f"nothing answers at {addr}: {START_SERVER}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {addr} within {timeout_s:g} s: is it overloaded? raise --timeout"
    return ""
