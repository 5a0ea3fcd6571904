"""The Redis engine: streams as the event log, consumer groups as subscriptions, one
MULTI/EXEC per batch as the commit. The only package that imports a Redis client."""
