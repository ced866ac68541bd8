"""Shared utilities for the paper packages of this repository (no model code here)."""

__version__ = "0.1.0"

#: The label every number produced on offline data carries, wherever it is shown.
OFFLINE_LABEL = "offline CPU-scale analogue"

__all__ = ["OFFLINE_LABEL", "__version__"]
