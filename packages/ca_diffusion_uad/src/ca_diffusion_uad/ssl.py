"""Self-supervised objectives of the encoder: SparK-style masked modelling and the ε-InfoNCE contrastive term."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def random_patch_mask(
    batch: int,
    size: tuple[int, int],
    patch: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Keep-mask ``[B, 1, H, W]`` (1 = visible) hiding ``round(ratio * n)`` of the ``n`` patches of every image."""
    h, w = size
    if h % patch or w % patch:
        raise ValueError(f"image size {size} is not a multiple of the patch size {patch}")
    gh, gw = h // patch, w // patch
    n = gh * gw
    n_hide = round(ratio * n)
    order = torch.rand(batch, n, generator=generator).argsort(dim=1)
    keep = torch.ones(batch, n)
    keep.scatter_(1, order[:, :n_hide], 0.0)
    keep = keep.view(batch, 1, gh, gw).repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    return keep.to(device)


def masked_l2(pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the hidden pixels only (``keep == 0``); ``[B, C, H, W]`` inputs, scalar output."""
    hidden = (1 - keep).expand_as(pred)
    return ((pred - target) ** 2 * hidden).sum() / hidden.sum().clamp_min(1)


def eps_infonce(z_a: torch.Tensor, z_b: torch.Tensor, tau: float = 0.07, eps: float = 0.5) -> torch.Tensor:
    """ε-InfoNCE between two views without labels (Barbano et al.): SimCLR with a margin ``ε`` on the positive.

    For anchor ``i`` with positive ``p`` (its other view) and negatives ``n`` (every other sample of both views),
    with cosine similarities ``s``::

        ℓ_i = -log( exp(s_p/τ) / (exp((s_p - ε)/τ) + Σ_n exp(s_n/τ)) )

    ``ε = 0`` gives the usual NT-Xent up to the positive also being in its denominator; ``ε > 0`` asks the positive
    to beat every negative by a margin.

    Args:
        z_a: First view ``[N, D]`` (masked images).
        z_b: Second view ``[N, D]`` (full images).
        tau: Temperature.
        eps: Margin.

    Returns:
        Mean loss over the ``2N`` anchors.
    """
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)
    n = z_a.shape[0]
    sim = z @ z.T / tau
    idx = torch.arange(2 * n, device=z.device)
    pos_idx = (idx + n) % (2 * n)
    pos = sim[idx, pos_idx]
    others = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    others[idx, pos_idx] = pos - eps / tau  # the positive's own term in the denominator, shifted by the margin
    return (torch.logsumexp(others, dim=1) - pos).mean()
