"""The six trading domains. Each imports only ``runtime.core`` and generated code."""
