"""The control-plane harness for the RPC fuzz test (the same one tests/control_plane uses)."""

from tests.control_plane.conftest import harness

__all__ = ["harness"]
