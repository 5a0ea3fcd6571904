"""The composition root: the only module that imports core, every domain and the control plane.

It wires them together for ``quantum run``; nothing else may import it (import-linter).
"""
