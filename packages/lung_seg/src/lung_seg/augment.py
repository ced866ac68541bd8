"""The paper's augmentation (mirror, flip, rotation), vectorised over a batch and driven by an explicit generator."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def augment(
    image: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator,
    *,
    mirror_p: float = 0.5,
    flip_p: float = 0.5,
    max_rotation_deg: float = 20.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly mirror (left-right), flip (up-down) and rotate each image and its mask alike.

    The image is resampled bilinearly, the mask with nearest neighbours (it stays binary); pixels rotated in from
    outside are zero. Draws come from ``generator`` only, so a run is reproducible from its seed and step.

    Args:
        image: ``[B, C, H, W]`` float.
        mask: ``[B, 1, H, W]`` float (0/1).
        generator: CPU generator for the random draws.
        mirror_p: Probability of a left-right mirror.
        flip_p: Probability of an up-down flip.
        max_rotation_deg: Angles are uniform in ``[-max, max]`` degrees.

    Returns:
        The augmented image and mask.
    """
    b = image.shape[0]
    draws = torch.rand(b, 3, generator=generator, dtype=torch.float64)
    sx = torch.where(draws[:, 0] < mirror_p, -1.0, 1.0)
    sy = torch.where(draws[:, 1] < flip_p, -1.0, 1.0)
    angle = (2 * draws[:, 2] - 1) * math.radians(max_rotation_deg)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid maps output to input coordinates: rotation R(angle) after the mirror/flip diag(sx, sy).
    theta = torch.stack(
        [
            torch.stack([cos * sx, -sin * sy, torch.zeros(b, dtype=torch.float64)], 1),
            torch.stack([sin * sx, cos * sy, torch.zeros(b, dtype=torch.float64)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta.to(image.dtype), list(image.shape), align_corners=False).to(image.device)
    image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = F.grid_sample(mask.to(image.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return image, mask
