"""The engine room: event bus, actor base, PolicyStore, tracing, logging, health, metrics.

Nothing here knows a trading domain, the control plane or a client (import-linter checks it).
"""
