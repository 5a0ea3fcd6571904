"""analytics: performance statistics; asks for DEFENSIVE when drawdown limits break."""
