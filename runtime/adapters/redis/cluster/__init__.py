"""Redis Cluster: the Redis adapter spread over a cluster's masters (DESIGN section 8)."""
