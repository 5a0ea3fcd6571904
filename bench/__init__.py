"""Benchmarks, run on demand with ``python -m bench <name>``; each prints one JSON object."""
