"""SAEmnesia's supervised fine-tuning: one latent per concept.

Each concept (object or style) is tied to one latent. The loss adds to the reconstruction a concept term on the
spatially pooled activations (target 1 for the sample's own object and style latents, 0 for the other assigned
latents, unassigned latents masked out), a small L1 term on the pre-activations and a term that decorrelates object
latents from style latents across the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F


def greedy_assignment(scores: torch.Tensor, order: Sequence[int] | None = None) -> torch.Tensor:
    """One-to-one concept -> latent assignment, greedy by score.

    Concepts are visited in ``order`` (objects first in the paper); each takes its highest-scoring latent that no
    earlier concept took.

    Args:
        scores: ``[n_concepts, n_latents]``, higher means a better match.
        order: Visiting order of the concepts (default: ``0 .. n_concepts - 1``).

    Returns:
        ``[n_concepts]`` latent index per concept, all distinct.
    """
    n_concepts, n_latents = scores.shape
    if n_concepts > n_latents:
        raise ValueError(f"cannot assign {n_concepts} concepts one-to-one to {n_latents} latents")
    order = list(range(n_concepts)) if order is None else list(order)
    if sorted(order) != list(range(n_concepts)):
        raise ValueError("order must be a permutation of the concepts")
    free = torch.ones(n_latents, dtype=torch.bool, device=scores.device)
    out = torch.empty(n_concepts, dtype=torch.long, device=scores.device)
    for c in order:  # sequential by definition: each choice removes a latent for the next concept
        latent = scores[c].masked_fill(~free, float("-inf")).argmax()
        out[c] = latent
        free[latent] = False
    return out


def random_assignment(n_concepts: int, n_latents: int, seed: int = 0) -> torch.Tensor:
    """One-to-one assignment to random distinct latents (for training from scratch)."""
    return torch.randperm(n_latents, generator=torch.Generator().manual_seed(seed))[:n_concepts]


def concept_targets(
    objects: torch.Tensor,
    styles: torch.Tensor,
    object_latents: torch.Tensor,
    style_latents: torch.Tensor,
    n_latents: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and mask of the concept loss.

    Args:
        objects: ``[B]`` object class per sample.
        styles: ``[B]`` style class per sample; ``-1`` means unstyled (no style target is 1).
        object_latents: ``[n_objects]`` assigned latent per object.
        style_latents: ``[n_styles]`` assigned latent per style.
        n_latents: Dictionary size.

    Returns:
        ``targets`` ``[B, n_latents]`` in {0, 1} and ``mask`` ``[n_latents]`` (True on assigned latents).
    """
    b = objects.shape[0]
    targets = torch.zeros(b, n_latents, device=objects.device)
    rows = torch.arange(b, device=objects.device)
    targets[rows, object_latents[objects]] = 1.0
    styled = styles >= 0
    targets[rows[styled], style_latents[styles[styled]]] = 1.0
    mask = torch.zeros(n_latents, dtype=torch.bool, device=objects.device)
    mask[object_latents] = True
    mask[style_latents] = True
    return targets, mask


def concept_loss(pooled: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits between pooled activations ``[B, n]`` and ``targets`` on the assigned latents only."""
    return F.binary_cross_entropy_with_logits(pooled[:, mask], targets[:, mask])


def decorrelation_loss(object_acts: torch.Tensor, style_acts: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean squared Pearson correlation, across the batch, between every object latent and every style latent.

    Args:
        object_acts: ``[B, n_objects]`` pooled activations of the object latents.
        style_acts: ``[B, n_styles]`` pooled activations of the style latents.
        eps: Guard against constant columns.
    """
    a = object_acts - object_acts.mean(0)
    s = style_acts - style_acts.mean(0)
    a = a / (a.pow(2).sum(0).sqrt() + eps)
    s = s / (s.pow(2).sum(0).sqrt() + eps)
    return (a.t() @ s).pow(2).mean()


def pool_tokens(acts: torch.Tensor, tokens_per_sample: int) -> torch.Tensor:
    """Mean over each sample's spatial tokens: ``[B * T, n]`` -> ``[B, n]``."""
    return acts.view(-1, tokens_per_sample, acts.shape[-1]).mean(1)


def supervised_loss(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    pre: torch.Tensor,
    tokens_per_sample: int,
    targets: torch.Tensor,
    mask: torch.Tensor,
    object_latents: torch.Tensor,
    style_latents: torch.Tensor,
    weights: tuple[float, float, float, float] = (1.0, 3.0, 0.01, 0.1),
    pooling: str = "relu",
) -> dict[str, torch.Tensor]:
    """SAEmnesia's loss on one batch of ``B`` samples with ``T`` tokens each.

    With ``pooling="relu"`` (the paper) the concept logits are the spatial means of the post-ReLU pre-activations.
    Those are >= 0, so a target-0 latent costs at least ln 2 and a latent that stops firing on every token gets no
    gradient at all: "silent on every sample" is a stationary point whose concept loss is exactly ln 2. With
    ``pooling="pre"`` the logits are the spatial means of the raw pre-activations (a linear read-out of the pooled
    input), which can go negative and always receive gradient.

    Args:
        x: Tokens ``[B * T, d]``.
        x_hat: Reconstructions ``[B * T, d]``.
        pre: Encoder pre-activations ``[B * T, n]``.
        tokens_per_sample: ``T``.
        targets: ``[B, n]`` from :func:`concept_targets`.
        mask: ``[n]`` assigned latents.
        object_latents: ``[n_objects]``.
        style_latents: ``[n_styles]``.
        weights: ``(mse, concept, l1, decorrelation)``: 1.0, 3.0, 0.01 and 0.1 in the paper.
        pooling: ``"relu"`` or ``"pre"``: what is spatially averaged into the concept logits.

    Returns:
        The weighted ``loss`` and its parts.
    """
    if pooling not in ("relu", "pre"):
        raise ValueError(f"pooling must be 'relu' or 'pre', got {pooling!r}")
    pooled = pool_tokens(pre.relu() if pooling == "relu" else pre, tokens_per_sample)
    parts = {
        "mse": F.mse_loss(x_hat, x),
        "concept": concept_loss(pooled, targets, mask),
        "l1": pre.abs().mean(),
        "decorrelation": decorrelation_loss(pooled[:, object_latents], pooled[:, style_latents]),
    }
    parts["loss"] = sum(w * parts[k] for w, k in zip(weights, ("mse", "concept", "l1", "decorrelation")))
    return parts
