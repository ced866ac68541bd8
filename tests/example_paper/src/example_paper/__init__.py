"""A tiny package that proves the repository contract (an MLP on 8x8 digits)."""

from example_paper.model import MLP

__all__ = ["MLP"]
