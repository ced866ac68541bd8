"""Model-vs-human alignment measures (Geirhos et al.) and the sweet-spot summary of a sparsity sweep."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

import torch


def shape_bias(pred: torch.Tensor, shape_label: torch.Tensor, texture_label: torch.Tensor) -> float:
    """Share of shape decisions among the cue-conflict trials decided by shape or by texture.

    Args:
        pred: ``[N]`` predicted classes.
        shape_label: ``[N]`` class of the shape cue.
        texture_label: ``[N]`` class of the texture cue (trials where both cues agree should be left out).

    Returns:
        ``shape hits / (shape hits + texture hits)``; NaN when neither cue was ever chosen.
    """
    shape, texture = int((pred == shape_label).sum()), int((pred == texture_label).sum())
    return shape / (shape + texture) if shape + texture else float("nan")


def error_consistency(correct_a: torch.Tensor, correct_b: torch.Tensor) -> float:
    """Cohen's kappa between two observers' trial-by-trial correctness (Geirhos et al., 2020).

    ``κ = (c_obs - c_exp) / (1 - c_exp)`` with ``c_obs`` the share of trials both got right or both got wrong and
    ``c_exp = p_a p_b + (1 - p_a)(1 - p_b)`` the agreement expected from their accuracies alone.

    Args:
        correct_a: ``[N]`` bool (or 0/1) correctness of observer A on each trial.
        correct_b: ``[N]`` the same trials for observer B.

    Returns:
        Kappa in [-1, 1]; NaN when both observers are always right (or always wrong), where it is undefined.
    """
    a, b = correct_a.bool(), correct_b.bool()
    # float64: in float32 the shares carry ~1e-7 errors that (1 - c_exp) can amplify
    c_obs = float((a == b).double().mean())
    pa, pb = float(a.double().mean()), float(b.double().mean())
    c_exp = pa * pb + (1 - pa) * (1 - pb)
    return (c_obs - c_exp) / (1 - c_exp) if c_exp < 1 else float("nan")


def sweet_spot(curves: Mapping[int, Sequence[float]], sparsities: Sequence[float]) -> dict[str, float]:
    """Where a metric peaks along a sparsity sweep, with its spread over seeds.

    Args:
        curves: ``seed -> metric value per round`` (all of length ``len(sparsities)``).
        sparsities: Sparsity of each round (round 0 is the dense model).

    Returns:
        ``best`` (peak of the seed-mean curve), ``best_std`` (its std over seeds), ``sparsity`` (where it peaks),
        ``dense`` (the dense model's mean), ``gain`` (``best - dense``) and ``seed_sparsity_std`` (spread of each
        seed's own best sparsity).
    """
    seeds = sorted(curves)
    table = torch.tensor([list(curves[s]) for s in seeds], dtype=torch.float64)  # [S, R]
    if table.shape[1] != len(sparsities):
        raise ValueError(f"curves have {table.shape[1]} rounds but {len(sparsities)} sparsities were given")
    mean = table.nanmean(0)
    i = int(torch.nan_to_num(mean, nan=-torch.inf).argmax())
    per_seed = [sparsities[int(torch.nan_to_num(row, nan=-torch.inf).argmax())] for row in table]
    std = float(table[:, i].std(unbiased=False)) if len(seeds) > 1 else 0.0
    return {
        "best": float(mean[i]),
        "best_std": std,
        "sparsity": float(sparsities[i]),
        "dense": float(mean[0]),
        "gain": float(mean[i] - mean[0]),
        "seed_sparsity_std": statistics.pstdev(per_seed) if len(per_seed) > 1 else 0.0,
    }
