"""NATS JetStream as an engine: the only code that speaks NATS (``nats-py``)."""
