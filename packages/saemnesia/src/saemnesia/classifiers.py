"""Small object and style classifiers for the toy world (stand-ins for UnlearnCanvas's ViT-L/16 heads)."""

from __future__ import annotations

import torch
from torch import nn


class ToyClassifier(nn.Module):
    """A shared conv trunk with an object head and a style head.

    Args:
        n_objects: Object classes.
        n_styles: Style classes.
        width: Channels of the first conv layer.
    """

    def __init__(self, n_objects: int = 6, n_styles: int = 4, width: int = 32):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.object_head = nn.Linear(2 * width, n_objects)
        self.style_head = nn.Linear(2 * width, n_styles)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Object and style logits of images ``[B, 3, H, W]`` in [0, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images [B, 3, H, W], got {tuple(images.shape)}")
        h = self.trunk(images)
        return self.object_head(h), self.style_head(h)
