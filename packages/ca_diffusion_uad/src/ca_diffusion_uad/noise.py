"""Noise for the forward diffusion: Gaussian, or multi-octave 2D simplex noise (AnoDDPM), vectorised in torch.

Simplex noise is spatially correlated, so noising an image with it destroys larger structures than white noise at
the same variance: lesions several pixels wide are "forgotten" and reconstructed as healthy tissue.
"""

from __future__ import annotations

import math

import torch

_F2 = 0.5 * (math.sqrt(3.0) - 1.0)  # skews the square grid onto the simplex (triangle) lattice
_G2 = (3.0 - math.sqrt(3.0)) / 6.0  # unskews it
# The 12 gradient directions of Gustavson's reference implementation (z dropped).
_GRAD2 = torch.tensor(
    [[1, 1], [-1, 1], [1, -1], [-1, -1], [1, 0], [-1, 0], [1, 0], [-1, 0], [0, 1], [0, -1], [0, 1], [0, -1]],
    dtype=torch.float64,
)


def permutation_table(generator: torch.Generator) -> torch.Tensor:
    """A random permutation of 0..255 repeated twice (``[512]`` int64), the lattice hash of simplex noise."""
    perm = torch.randperm(256, generator=generator)
    return torch.cat([perm, perm])


def simplex_2d(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """2D simplex noise at points ``(x, y)`` (any equal shapes), values in about ``[-1, 1]``.

    Args:
        x: Horizontal lattice coordinates.
        y: Vertical lattice coordinates.
        perm: Permutation table from :func:`permutation_table` (``[512]``).

    Returns:
        Noise of the shape of ``x``, in the dtype of ``x``.
    """
    s = (x + y) * _F2
    i, j = torch.floor(x + s), torch.floor(y + s)
    t = (i + j) * _G2
    x0, y0 = x - (i - t), y - (j - t)  # offset from the first simplex corner
    upper = (x0 > y0).to(x.dtype)  # which of the two triangles of the skewed cell holds the point
    i1, j1 = upper, 1.0 - upper
    corners = [(x0, y0, 0, 0), (x0 - i1 + _G2, y0 - j1 + _G2, i1, j1), (x0 - 1 + 2 * _G2, y0 - 1 + 2 * _G2, 1, 1)]
    ii, jj = i.long() & 255, j.long() & 255
    grad = _GRAD2.to(x.device, x.dtype)
    total = torch.zeros_like(x)
    for cx, cy, di, dj in corners:
        di = di.long() if torch.is_tensor(di) else di
        dj = dj.long() if torch.is_tensor(dj) else dj
        g = perm[ii + di + perm[jj + dj]] % 12
        falloff = (0.5 - cx * cx - cy * cy).clamp_min(0.0)
        total = total + falloff**4 * (grad[g, 0] * cx + grad[g, 1] * cy)
    return 70.0 * total


def simplex_noise(
    shape: tuple[int, ...],
    generator: torch.Generator,
    *,
    octaves: int = 6,
    persistence: float = 0.8,
    frequency: float = 64.0,
    standardise: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Multi-octave simplex noise for a batch of images, one random field per image.

    Octave ``o`` has feature size ``frequency / 2**o`` pixels (at 256 px, scaled to the image side as AnoDDPM's
    256 px images) and amplitude ``persistence**o``; every image gets its own random lattice offset.

    Args:
        shape: ``(B, C, H, W)``.
        generator: CPU generator; the noise is a function of its state only.
        octaves: Number of octaves.
        persistence: Amplitude ratio between consecutive octaves.
        frequency: Feature size in pixels of the coarsest octave at 256 px.
        standardise: Rescale each image's field to zero mean and unit variance, the variance the diffusion assumes.
        device: Output device.
        dtype: Output dtype.

    Returns:
        Noise ``shape``.
    """
    b, c, h, w = shape
    perm = permutation_table(generator)
    offsets = torch.rand(b, c, 1, 1, 2, generator=generator, dtype=torch.float64) * 4096.0
    scale = frequency * max(h, w) / 256.0
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    field = torch.zeros(b, c, h, w, dtype=torch.float64)
    for o in range(octaves):
        step = (2.0**o) / scale
        field += persistence**o * simplex_2d(xs * step + offsets[..., 0], ys * step + offsets[..., 1], perm)
    field /= sum(persistence**o for o in range(octaves))
    if standardise:
        field = field - field.mean(dim=(-2, -1), keepdim=True)
        field = field / field.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return field.to(device=device, dtype=dtype)


def sample_noise(
    like: torch.Tensor,
    kind: str,
    generator: torch.Generator | None = None,
    **simplex_kwargs: float,
) -> torch.Tensor:
    """Noise shaped like ``like``: ``"gaussian"`` or ``"simplex"`` (standardised, see :func:`simplex_noise`).

    Without a generator both draw from the global torch RNG (the simplex lattice seed included), so checkpoints that
    carry the RNG state resume exactly.
    """
    if kind == "gaussian":
        return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)
    if kind == "simplex":
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return simplex_noise(
            tuple(like.shape),
            torch.Generator().manual_seed(seed),
            device=like.device,
            dtype=like.dtype,
            **simplex_kwargs,
        )
    raise ValueError(f"noise must be 'gaussian' or 'simplex', got {kind!r}")
