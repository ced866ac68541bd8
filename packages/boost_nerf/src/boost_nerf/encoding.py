"""Small shared pieces: view-direction encoding, box normalisation, DVGO's raw-density-to-alpha."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def direction_encoding(dirs: torch.Tensor, n_freqs: int = 4) -> torch.Tensor:
    """NeRF positional encoding of unit view directions: ``[d, sin(2^k d), cos(2^k d)]``, k < ``n_freqs``.

    Args:
        dirs: ``[P, 3]``.
        n_freqs: Number of octaves (4 gives the paper's 3 + 3*4*2 = 27 dims).

    Returns:
        ``[P, 3 + 6 * n_freqs]``.
    """
    freqs = 2.0 ** torch.arange(n_freqs, dtype=dirs.dtype, device=dirs.device)
    scaled = (dirs[..., None] * freqs).flatten(-2)  # [P, 3 * n_freqs], dims grouped per axis
    return torch.cat([dirs, scaled.sin(), scaled.cos()], -1)


def direction_encoding_dim(n_freqs: int = 4) -> int:
    """Width of :func:`direction_encoding`."""
    return 3 + 6 * n_freqs


def normalize_to_box(xyz: torch.Tensor, aabb: torch.Tensor) -> torch.Tensor:
    """Map points ``[P, 3]`` in the box ``aabb = [x0, y0, z0, x1, y1, z1]`` to ``[-1, 1]^3``."""
    lo, hi = aabb[:3], aabb[3:]
    return (xyz - lo) / (hi - lo) * 2 - 1


def act_shift_for(alpha_init: float) -> float:
    """DVGO's ``act_shift``: a zero raw density gives alpha ``alpha_init`` over one voxel."""
    return math.log(1 / (1 - alpha_init) - 1)


def raw_to_alpha(raw: torch.Tensor, act_shift: float, interval: float) -> torch.Tensor:
    """DVGO's Raw2Alpha: ``1 - (1 + exp(raw + shift))^(-interval)`` = ``1 - exp(-softplus(raw + shift) * interval)``.

    Args:
        raw: Raw densities ``[...]``.
        act_shift: Shift so that a zero-initialised grid starts nearly transparent.
        interval: Step length in voxels of the finest grid (DVGO's ``stepsize``).
    """
    return -torch.expm1(-F.softplus(raw + act_shift) * interval)
