"""The gRPC control plane (``quantum.control.v1``): servicers, auth and interceptors.

Imports ``runtime.core`` and generated code, never a domain.
"""
