"""Clients of the control plane: the Python client and ``quantumctl`` (the Node client lives
in ``clients/node``)."""
