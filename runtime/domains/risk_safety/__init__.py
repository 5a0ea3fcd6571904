"""risk_safety: pre-trade checks against the live policy; approves or rejects signals."""
