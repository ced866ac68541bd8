"""Unstructured pruning: global magnitude pruning on a geometric schedule, one-shot SNIP, sparsity, export.

Masks live in ``torch.nn.utils.prune``'s reparametrisation (``weight_orig`` parameter, ``weight_mask`` buffer, a
forward pre-hook computing ``weight = weight_orig * weight_mask``), as in the paper. Every prunable layer gets an
all-ones mask when the model is built (:func:`add_masks`), so the state-dict keys are the same before and after any
round and a checkpoint of any round loads into a freshly built model. Which entries to drop is computed here
(:func:`global_magnitude_masks`, :func:`snip_scores`), so the number kept is exactly the schedule's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import prune

LAYER_TYPES: dict[str, type[nn.Module]] = {"Conv2d": nn.Conv2d, "Linear": nn.Linear}


def prunable_layers(model: nn.Module, layer_types: Sequence[str] = ("Conv2d",)) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs whose ``weight`` is pruned, in module order.

    Args:
        model: Any module.
        layer_types: Names from :data:`LAYER_TYPES` (``"Conv2d"``, ``"Linear"``).
    """
    unknown = set(layer_types) - set(LAYER_TYPES)
    if unknown:
        raise ValueError(f"unknown layer types {sorted(unknown)}; choose from {sorted(LAYER_TYPES)}")
    types = tuple(LAYER_TYPES[t] for t in layer_types)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, types)]


def add_masks(layers: Sequence[nn.Module]) -> None:
    """Give every layer an all-ones ``weight_mask`` (idempotent: already masked layers are left alone)."""
    for m in layers:
        if not prune.is_pruned(m) or not hasattr(m, "weight_mask"):
            prune.identity(m, "weight")


def schedule(rate: float, target: float) -> list[float]:
    """Target sparsity of rounds ``0..R``: ``1 - (1 - rate)**k``, up to the first round reaching ``target``.

    ``schedule(0.2, 0.95)`` gives the paper's ladder 0, 0.2, 0.36, 0.488, ..., 0.956 (15 entries, 14 rounds).
    """
    if not 0 < rate < 1 or not 0 <= target < 1:
        raise ValueError(f"need 0 < rate < 1 and 0 <= target < 1, got rate={rate}, target={target}")
    rounds = 0 if target == 0 else math.ceil(math.log1p(-target) / math.log1p(-rate) - 1e-9)
    return [1 - (1 - rate) ** k for k in range(rounds + 1)]


def keep_count(n: int, sparsity: float) -> int:
    """How many of ``n`` weights survive at ``sparsity`` (rounded to the nearest count)."""
    return n - round(sparsity * n)


def global_magnitude_masks(
    scores: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], keep: int
) -> list[torch.Tensor]:
    """Masks keeping the ``keep`` highest-scoring entries over all tensors; pruned entries stay pruned.

    Args:
        scores: One score tensor per layer (``|w|`` for magnitude pruning, ``|w * dL/dw|`` for SNIP), any shapes.
        masks: Current 0/1 masks, shapes as ``scores``.
        keep: Total number of entries to keep; at most the number currently unmasked.

    Returns:
        New 0/1 masks (dtype of ``masks``), shapes as ``scores``.
    """
    flat = torch.cat([s.detach().flatten() for s in scores]).float()
    alive = torch.cat([m.flatten() for m in masks]).bool()
    if keep > int(alive.sum()):
        raise ValueError(f"cannot keep {keep} weights: only {int(alive.sum())} are unpruned")
    # Pruned entries rank below every live one, whatever their score, so a mask never grows back.
    ranked = torch.where(alive, flat, torch.full_like(flat, -math.inf))
    new = torch.zeros_like(flat)
    new[torch.topk(ranked, keep, sorted=False).indices] = 1
    out, start = [], 0
    for m in masks:
        out.append(new[start : start + m.numel()].view_as(m).to(m.dtype))
        start += m.numel()
    return out


def set_masks(layers: Sequence[nn.Module], masks: Sequence[torch.Tensor]) -> None:
    """Write ``masks`` into the layers' ``weight_mask`` buffers in place (keeps the buffers, hence the state dict)."""
    with torch.no_grad():
        for m, mask in zip(layers, masks, strict=True):
            m.weight_mask.copy_(mask)
            # Zero the stored weights too: momentum and weight decay then never act on pruned entries' values.
            m.weight_orig.mul_(mask)


def magnitude_prune(layers: Sequence[nn.Module], sparsity: float) -> float:
    """Global magnitude pruning of ``layers`` to exactly ``keep_count(n, sparsity)`` surviving weights.

    Returns:
        The measured sparsity afterwards.
    """
    add_masks(layers)
    masks = [m.weight_mask for m in layers]
    n = sum(mask.numel() for mask in masks)
    scores = [(m.weight_orig * m.weight_mask).abs() for m in layers]
    set_masks(layers, global_magnitude_masks(scores, masks, keep_count(n, sparsity)))
    return measured_sparsity(layers)


def snip_scores(
    model: nn.Module, layers: Sequence[nn.Module], loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> list[torch.Tensor]:
    """SNIP connection sensitivity ``|w * dL/dw|`` per layer on one batch (Lee et al., 2019).

    Args:
        model: The network; ``loss_fn(model(x))`` must be a scalar.
        layers: Masked layers (see :func:`add_masks`).
        loss_fn: Maps logits ``[B, K]`` to the scalar loss.
        x: Input batch ``[B, C, H, W]``.
    """
    add_masks(layers)
    params = [m.weight_orig for m in layers]
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(model(x)), params, allow_unused=True)
    return [
        (p * m.weight_mask * (g if g is not None else torch.zeros_like(p))).abs().detach()
        for p, m, g in zip(params, layers, grads)
    ]


def snip_prune(
    model: nn.Module,
    layers: Sequence[nn.Module],
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sparsity: float,
) -> float:
    """One-shot SNIP pruning to ``sparsity``; returns the measured sparsity."""
    scores = snip_scores(model, layers, loss_fn, x)
    masks = [m.weight_mask for m in layers]
    n = sum(mask.numel() for mask in masks)
    set_masks(layers, global_magnitude_masks(scores, masks, keep_count(n, sparsity)))
    return measured_sparsity(layers)


def measured_sparsity(layers: Sequence[nn.Module]) -> float:
    """Share of pruned weights over ``layers`` (from their masks; 0 for layers without one)."""
    total = sum(m.weight.numel() for m in layers)
    zeros = sum(int((m.weight_mask == 0).sum()) for m in layers if hasattr(m, "weight_mask"))
    return zeros / total if total else 0.0


def make_permanent(model: nn.Module) -> nn.Module:
    """Bake every mask into its weight and drop the reparametrisation (for export); returns ``model``."""
    for m in model.modules():
        if hasattr(m, "weight_mask") and prune.is_pruned(m):
            prune.remove(m, "weight")
    return model
