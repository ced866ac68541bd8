r"""GoDe's level assignment: nested levels of detail by iterative gradient-importance masking.

A level map ``level_of [N]`` (int64) stores, per Gaussian, the first level it belongs to (``-1``: pruned). Level
``l`` renders every Gaussian with ``0 <= level_of <= l``, so ``G_0 ⊂ G_1 ⊂ ... ⊂ G_{L-1}`` by construction and the
enhancement set ``E_l = G_l \ G_{l-1}`` (the XOR of consecutive masks) is exactly ``level_of == l``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch


def level_sizes(num: int, num_levels: int, min_size: int, max_fraction: float) -> list[int]:
    """Geometric level sizes ``|G_l| = min * b^l`` from ``min_size`` up to ``max_fraction * num``.

    Args:
        num: Gaussians in the trained model.
        num_levels: ``L``.
        min_size: ``|G_0|``.
        max_fraction: ``|G_{L-1}| / num``; the remaining ``1 - max_fraction`` are pruned for good.

    Returns:
        ``L`` strictly increasing sizes ending at ``round(max_fraction * num)``.
    """
    top = round(max_fraction * num)
    if num_levels < 1 or not 0 < min_size <= top:
        raise ValueError(f"need num_levels >= 1 and 0 < min_size <= max_fraction * num ({top}), got {min_size}")
    if num_levels == 1:
        return [top]
    base = (top / min_size) ** (1.0 / (num_levels - 1))
    sizes = [round(min_size * base**level) for level in range(num_levels - 1)] + [top]
    if any(b <= a for a, b in itertools.pairwise(sizes)):
        raise ValueError(f"level sizes {sizes} are not strictly increasing: use fewer levels or a smaller min_size")
    return sizes


def assign_levels(importance: Callable[[torch.Tensor], torch.Tensor], num: int, sizes: Sequence[int]) -> torch.Tensor:
    """Iterative masking: keep the ``sizes[l]`` most important Gaussians of level ``l + 1``, from the top down.

    The first pass scores the full model and keeps ``sizes[-1]`` (the rest are pruned); each later pass rescores with
    only the current level active, so masked Gaussians (zero gradient) can never re-enter and the levels nest.

    Args:
        importance: ``active [N] bool -> scores [N]``; higher is more important. Inactive Gaussians are excluded
            whatever their score.
        num: ``N``.
        sizes: Increasing level sizes (see :func:`level_sizes`).

    Returns:
        ``level_of [N]`` int64: the first level containing each Gaussian, ``-1`` for pruned ones.
    """
    level_of = torch.full((num,), -1, dtype=torch.long)
    active = torch.ones(num, dtype=torch.bool)
    for level in range(len(sizes) - 1, -1, -1):
        if sizes[level] >= int(active.sum()):  # keeps everything: no need to score
            level_of[active] = level
            continue
        scores = importance(active.clone()).detach().double().cpu()
        scores = torch.where(active, scores, torch.full_like(scores, -torch.inf))
        # Ties broken by index so the assignment is deterministic.
        keep = torch.argsort(scores, descending=True, stable=True)[: sizes[level]]
        active = torch.zeros(num, dtype=torch.bool)
        active[keep] = True
        level_of[active] = level
    return level_of


def level_mask(level_of: torch.Tensor, level: int) -> torch.Tensor:
    """Boolean ``[N]`` membership of level ``level`` (``G_level``)."""
    return (level_of >= 0) & (level_of <= level)


def enhancement_masks(level_of: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """``E_0 = G_0`` and ``E_l = G_l XOR G_{l-1}``: what streaming level ``l`` adds."""
    masks = [level_mask(level_of, lvl) for lvl in range(num_levels)]
    return [masks[0]] + [masks[lvl] ^ masks[lvl - 1] for lvl in range(1, num_levels)]


def fade_opacities(opacities: torch.Tensor, level_of: torch.Tensor, level: int, fade: float = 1.0) -> torch.Tensor:
    """Opacities ``[N]`` for rendering level ``level`` while its enhancement set fades in (``fade`` in [0, 1]).

    Gaussians outside ``G_level`` get opacity 0; the newest set ``E_level`` is scaled by ``fade`` so that a viewer
    switching levels blends instead of popping.
    """
    scale = torch.where(level_of == level, torch.as_tensor(fade, dtype=opacities.dtype), 1.0).to(opacities)
    return torch.where(level_mask(level_of, level).to(opacities.device), opacities * scale, torch.zeros_like(opacities))


def sample_level(num_levels: int, weighting: str, gen: torch.Generator) -> int:
    """One level per fine-tuning iteration: ``"uniform"`` or ``"linear"`` (probability ∝ l + 1, toward high LoDs)."""
    if weighting == "uniform":
        weights = torch.ones(num_levels)
    elif weighting == "linear":
        weights = torch.arange(1, num_levels + 1, dtype=torch.float)
    else:
        raise ValueError(f"level weighting must be 'uniform' or 'linear', got {weighting!r}")
    return int(torch.multinomial(weights, 1, generator=gen))


def gradient_importance(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-Gaussian importance: the sum over parameter groups of each Gaussian's gradient norm.

    Args:
        grads: Accumulated gradients by parameter name, each ``[N, ...]`` (opacity, xyz, scaling, rotation,
            SH rest, SH dc).

    Returns:
        Scores ``[N]``.
    """
    return sum(g.reshape(g.shape[0], -1).norm(dim=-1) for g in grads.values())
