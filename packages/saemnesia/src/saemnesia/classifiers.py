"""Small object and style classifiers for the toy world (stand-ins for UnlearnCanvas's ViT-L/16 heads)."""

from __future__ import annotations

import torch
from torch import nn


class ToyClassifier(nn.Module):
    """A shared conv trunk with an object head and a style head.

    Four 3x3 conv + BatchNorm + ReLU layers (two per resolution, 16 -> 8 -> 4 px at 16 px input), then the
    ``4 x 4`` map is flattened (not averaged: object identity is the *arrangement* of edges, which a global average
    throws away; a first version with global pooling and no normalisation stalled at 0.27-0.47 object accuracy).

    Args:
        n_objects: Object classes.
        n_styles: Style classes.
        width: Channels of the first conv layers (the second pair has ``2 * width``).
        hidden: Width of the shared fully connected layer.
    """

    def __init__(self, n_objects: int = 6, n_styles: int = 4, width: int = 32, hidden: int = 128):
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.trunk = nn.Sequential(
            *block(3, width),
            *block(width, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            *block(2 * width, 2 * width),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),  # identity at 16 px; larger (real) images are pooled to the same 4 x 4 grid
            nn.Flatten(),
            nn.Linear(2 * width * 16, hidden),
            nn.ReLU(),
        )
        self.object_head = nn.Linear(hidden, n_objects)
        self.style_head = nn.Linear(hidden, n_styles)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Object and style logits ``[B, n_objects]``, ``[B, n_styles]`` of images ``[B, 3, H, W]`` in [0, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images [B, 3, H, W], got {tuple(images.shape)}")
        h = self.trunk(images)
        return self.object_head(h), self.style_head(h)
