"""Quantum Trader core: the actor runtime (``runtime.core``) and the six trading domains."""
