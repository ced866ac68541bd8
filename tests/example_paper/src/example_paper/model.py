"""The method: a two-layer perceptron (pure torch, no Lightning)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Two-layer perceptron on flattened images.

    Args:
        in_shape: Input image shape ``(C, H, W)``.
        hidden: Hidden width.
        num_classes: Number of output logits.
        dropout: Dropout probability on the hidden layer.
    """

    def __init__(
        self, in_shape: tuple[int, int, int] = (1, 8, 8), hidden: int = 64, num_classes: int = 10, dropout: float = 0.1
    ):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(int(torch.tensor(in_shape).prod()), hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of images ``[B, C, H, W]``."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(
                f"expected images of shape [B, {', '.join(map(str, self.in_shape))}], got {tuple(x.shape)}"
            )
        return self.net(x)
