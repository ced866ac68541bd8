"""Ray sampling and compositing.

CPU: a pure-torch sampler (uniform steps inside the scene box, skipping empty cells of an occupancy grid) on dense
``[n_rays, n_samples]`` tensors, composited with nerfacc's batched functions (which run on CPU). GPU: nerfacc's
``OccGridEstimator`` (CUDA kernels, packed samples), only when :func:`reprokit.devices.cuda_kernels_available`.
"""

from __future__ import annotations

import math

import torch
from nerfacc import accumulate_along_rays, render_weight_from_alpha


def ray_aabb(origins: torch.Tensor, dirs: torch.Tensor, aabb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances of rays ``[R, 3]`` through the box ``[6]`` (slab method); ``t_far < t_near``: miss."""
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    ta = (aabb[:3] - origins) / safe
    tb = (aabb[3:] - origins) / safe
    t_near = torch.minimum(ta, tb).amax(-1).clamp_min(0)
    t_far = torch.maximum(ta, tb).amin(-1)
    return t_near, t_far


def sample_along_rays(
    origins: torch.Tensor,
    dirs: torch.Tensor,
    aabb: torch.Tensor,
    step: float,
    jitter: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Evenly spaced sample midpoints inside the box, ``step`` apart along each ray.

    Args:
        origins: ``[R, 3]``.
        dirs: Unit directions ``[R, 3]``.
        aabb: Box ``[6]``.
        step: Distance between samples (world units).
        jitter: Per-ray offset in ``[0, 1)`` of a step ``[R]`` (stratified training); None puts samples mid-step.

    Returns:
        Midpoint distances ``[R, S]`` and a validity mask ``[R, S]`` (inside the box).
    """
    t_near, t_far = ray_aabb(origins, dirs, aabb)
    diag = float((aabb[3:] - aabb[:3]).norm())
    n = max(1, math.ceil(diag / step))
    offset = torch.full_like(t_near, 0.5) if jitter is None else jitter
    t = t_near[:, None] + (torch.arange(n, device=origins.device, dtype=origins.dtype) + offset[:, None]) * step
    return t, t < t_far[:, None]


def occupancy_lookup(points: torch.Tensor, occupancy: torch.Tensor, aabb: torch.Tensor) -> torch.Tensor:
    """Whether points ``[P, 3]`` fall in an occupied cell of a boolean grid ``[G, G, G]`` (x, y, z order)."""
    g = occupancy.shape[0]
    cell = ((points - aabb[:3]) / (aabb[3:] - aabb[:3]) * g).long().clamp(0, g - 1)
    return occupancy[cell[:, 0], cell[:, 1], cell[:, 2]]


def cell_centers(resolution: int, aabb: torch.Tensor) -> torch.Tensor:
    """World coordinates ``[G, G, G, 3]`` of an occupancy grid's cell centres (x, y, z order)."""
    c = (torch.arange(resolution, device=aabb.device, dtype=aabb.dtype) + 0.5) / resolution
    xx, yy, zz = torch.meshgrid(c, c, c, indexing="ij")
    unit = torch.stack([xx, yy, zz], -1)
    return aabb[:3] + unit * (aabb[3:] - aabb[:3])


def composite(
    alphas: torch.Tensor, rgbs: torch.Tensor, background: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Alpha compositing front to back with nerfacc's batched functions.

    Args:
        alphas: ``[R, S]``.
        rgbs: ``[R, S, 3]``.
        background: Colour ``[3]`` or a scalar, added with the remaining transmittance.

    Returns:
        Colour ``[R, 3]``, opacity ``[R]`` and the weights ``[R, S]``.
    """
    weights, _ = render_weight_from_alpha(alphas)
    rgb = accumulate_along_rays(weights, rgbs)
    opacity = accumulate_along_rays(weights, None)[:, 0]
    return (
        rgb + (1 - opacity[:, None]) * torch.as_tensor(background, dtype=rgb.dtype, device=rgb.device),
        opacity,
        weights,
    )
