"""``quantumctl``: the operator's command line for the control plane."""
