"""LOST (Siméoni et al., 2021): single-object discovery from patch features, batched in plain torch.

1. Patch-similarity graph ``A = F Fᵀ``; a patch's degree is the number of patches it correlates positively with.
2. Seed: the patch of lowest degree (objects cover fewer patches than background).
3. Seed expansion: of the ``k`` lowest-degree patches, keep those correlating positively with the seed.
4. Mask: patches whose summed similarity to the expanded seeds is positive.
5. Box: the bounding box of the mask's 4-connected component that contains the seed.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def connected_component(mask: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """The 4-connected component of ``mask`` containing ``seed``, by flood fill.

    Args:
        mask: ``[B, h, w]`` bool.
        seed: ``[B]`` flat index ``row * w + col`` of a pixel (in ``mask`` or not; it is always included).

    Returns:
        ``[B, h, w]`` bool.
    """
    b, h, w = mask.shape
    comp = torch.zeros(b, h * w, dtype=torch.bool, device=mask.device)
    comp[torch.arange(b), seed] = True
    comp = comp.view(b, 1, h, w).float()
    allowed = mask.view(b, 1, h, w).float().maximum(comp)
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], device=mask.device).view(1, 1, 3, 3)
    for _ in range(h * w):
        grown = (F.conv2d(comp, cross, padding=1) > 0).float() * allowed
        if torch.equal(grown, comp):
            break
        comp = grown
    return comp.view(b, h, w).bool()


def lost(
    features: torch.Tensor, grid: tuple[int, int], k: int = 100, center: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LOST on a batch of patch features.

    Args:
        features: ``[B, N, D]`` patch features, ``N = h * w`` in row-major order.
        grid: ``(h, w)``.
        k: Number of lowest-degree patches considered for seed expansion (capped at ``N``).
        center: Subtract each image's mean feature first. Post-ReLU CNN features are non-negative, so their raw dot
            products are all positive, every patch has full degree and the graph says nothing; centred, the
            similarity is a covariance and "positively correlated" means what LOST intends.

    Returns:
        Boxes ``[B, 4]`` as ``(x0, y0, x1, y1)`` in patch units (``x1``, ``y1`` exclusive), seeds ``[B]`` (flat
        index), and object masks ``[B, h, w]`` (the seed's connected component).
    """
    b, n, _ = features.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"{n} features do not fill a {h}x{w} grid")
    f = features.float()
    if center:
        f = f - f.mean(1, keepdim=True)
    sim = f @ f.transpose(1, 2)  # [B, N, N]
    degree = (sim > 0).sum(-1)  # [B, N]
    seed = degree.argmin(-1)  # ties: lowest index, as torch.argmin
    k = min(k, n)
    candidates = degree.topk(k, dim=-1, largest=False, sorted=True).indices  # [B, k]
    seed_sim = sim[torch.arange(b), seed]  # [B, N]
    keep = torch.gather(seed_sim, 1, candidates) > 0  # [B, k]; the seed itself always qualifies
    # Summed similarity of every patch to the kept seeds.
    score = (torch.gather(sim, 2, candidates[:, None, :].expand(b, n, k)) * keep[:, None, :]).sum(-1)  # [B, N]
    comp = connected_component((score > 0).view(b, h, w), seed)
    rows, cols = comp.any(2), comp.any(1)  # [B, h], [B, w]
    ar_h, ar_w = torch.arange(h, device=f.device), torch.arange(w, device=f.device)
    big = max(h, w) + 1
    y0 = torch.where(rows, ar_h, big).min(1).values
    y1 = torch.where(rows, ar_h, -1).max(1).values + 1
    x0 = torch.where(cols, ar_w, big).min(1).values
    x1 = torch.where(cols, ar_w, -1).max(1).values + 1
    return torch.stack([x0, y0, x1, y1], dim=1), seed, comp


def patch_boxes_to_pixels(boxes: torch.Tensor, grid: tuple[int, int], image_hw: tuple[int, int]) -> torch.Tensor:
    """Scale ``[B, 4]`` patch-unit boxes to pixel units of an ``image_hw`` image."""
    sy, sx = image_hw[0] / grid[0], image_hw[1] / grid[1]
    return boxes.float() * torch.tensor([sx, sy, sx, sy], device=boxes.device)
