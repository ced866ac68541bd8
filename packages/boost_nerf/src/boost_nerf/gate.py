"""The gate (a fast NeRF itself) and top-k routing."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from boost_nerf.encoding import direction_encoding, direction_encoding_dim, normalize_to_box
from boost_nerf.experts import Expert


class NeRFGate(nn.Module):
    """Low-resolution feature grid + view-direction encoding -> MLP -> one logit per expert.

    The paper's gate: a DVGO-style 128^3 grid with 12 channels copied from the pretrained lowest-resolution model,
    ``Linear(12 + 27, 64) -> ReLU -> Linear(64, M)``.

    Args:
        num_experts: M.
        resolution: Gate grid size per side (paper: 128).
        aabb: Scene box.
        feature_dim: Grid channels (12 for DVGO; the init expert's ``feature_dim`` otherwise).
        hidden: Hidden width (paper: 64).
        dir_freqs: Octaves of the view-direction encoding (paper: 4, giving 27 dims).
    """

    def __init__(
        self,
        num_experts: int,
        resolution: int,
        aabb: tuple[float, ...],
        feature_dim: int = 12,
        hidden: int = 64,
        dir_freqs: int = 4,
    ):
        super().__init__()
        self.num_experts, self.resolution, self.dir_freqs = num_experts, resolution, dir_freqs
        self.register_buffer("aabb", torch.tensor(aabb, dtype=torch.float32), persistent=False)
        self.grid = nn.Parameter(torch.zeros(1, feature_dim, resolution, resolution, resolution))
        self.mlp = nn.Sequential(
            nn.Linear(feature_dim + direction_encoding_dim(dir_freqs), hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_experts),
        )

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Logits ``[P, M]`` at world points ``[P, 3]`` with unit view directions ``[P, 3]``."""
        xn = normalize_to_box(x, self.aabb).view(1, 1, 1, -1, 3)
        feat = F.grid_sample(self.grid, xn, mode="bilinear", align_corners=True).view(self.grid.shape[1], -1).t()
        return self.mlp(torch.cat([feat, direction_encoding(d, self.dir_freqs)], -1))

    @torch.no_grad()
    def init_from(self, expert: Expert, chunk: int = 65536) -> None:
        """Fill the grid with ``expert``'s features at the grid vertices (an exact copy for a same-size DVGO)."""
        if expert.feature_dim != self.grid.shape[1]:
            raise ValueError(f"gate has {self.grid.shape[1]} channels, expert features have {expert.feature_dim}")
        r = self.resolution
        lin = torch.linspace(-1, 1, r, device=self.grid.device)
        zz, yy, xx = torch.meshgrid(lin, lin, lin, indexing="ij")
        unit = torch.stack([xx, yy, zz], -1).view(-1, 3)  # grid order z, y, x as grid_sample reads it
        lo, hi = self.aabb[:3], self.aabb[3:]
        world = (unit + 1) / 2 * (hi - lo) + lo
        feats = torch.cat([expert.features(world[i : i + chunk]) for i in range(0, len(world), chunk)])
        self.grid.copy_(feats.t().reshape(1, -1, r, r, r))


def top_k_routing(probs: torch.Tensor, k: int, renormalize_top1: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each point's ``k`` most probable experts.

    Args:
        probs: Gate probabilities ``[P, M]`` (rows sum to 1).
        k: Experts per point, ``1 <= k <= M``.
        renormalize_top1: For ``k == 1``, blend with weight 1 (the chosen expert's output unchanged) instead of the
            raw top-1 probability of the released code. The weight is ``p / stop_grad(p)``: exactly 1 forward, while
            the reconstruction loss still reaches the gate (gradient ``1 / p`` times that of the raw weight); a plain
            ``p / p`` would leave the gate only the balancing loss.

    Returns:
        Dense blend weights ``[P, M]`` (zero outside the top-k; the top-k renormalised to sum 1 when ``k > 1``, the
        raw top-1 probability when ``k == 1`` unless ``renormalize_top1``) and the chosen experts ``[P, k]`` (int64).
    """
    if not 1 <= k <= probs.shape[-1]:
        raise ValueError(f"top_k must be in [1, {probs.shape[-1]}], got {k}")
    top, index = probs.topk(k, dim=-1)
    if k > 1:
        top = top / top.sum(-1, keepdim=True)
    elif renormalize_top1:
        top = top / top.detach()
    return torch.zeros_like(probs).scatter(-1, index, top), index
