"""REM = LOBSTER regularisation + per-epoch global magnitude pruning (pure torch, no Lightning).

LOBSTER (Tartaglione et al. 2022) shrinks every parameter whose loss sensitivity ``|dL/dp|`` is below 1:
``p <- p - lambda * p * relu(1 - |dL/dp|)``, applied after backward and before the optimizer step. Once per epoch REM
searches the largest single magnitude threshold over all weight tensors that keeps the validation margin loss at
or below its unpruned value, and a mask keeps pruned weights at zero from then on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn


@torch.no_grad()
def lobster_(params: Iterable[nn.Parameter], lam: float) -> None:
    """In-place LOBSTER step on parameters whose ``.grad`` holds ``dL/dp``: ``p -= lam * p * relu(1 - |grad|)``."""
    for p in params:
        if p.grad is not None and lam > 0:
            p.sub_(lam * p * torch.relu(1.0 - p.grad.abs()))


def threshold_targets(named: Iterable[tuple[str, nn.Parameter]]) -> list[nn.Parameter]:
    """The tensors the global threshold applies to: those named ``weight`` (biases and routing bias excluded)."""
    return [p for n, p in named if n.rsplit(".", 1)[-1] == "weight"]


def nonzero_masks(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Boolean masks of the entries that are still nonzero (rebuilt each epoch from the current zeros)."""
    return [p.detach() != 0 for p in params]


@torch.no_grad()
def apply_masks_(params: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> None:
    """Zero every masked-out entry (pruned weights stay pruned after optimizer steps)."""
    for p, m in zip(params, masks, strict=True):
        p.mul_(m)


@torch.no_grad()
def prune_below_(params: Sequence[torch.Tensor], threshold: float) -> None:
    """Set every entry with ``|p| <= threshold`` to zero (``threshold=0`` changes nothing)."""
    for p in params:
        p.masked_fill_(p.abs() <= threshold, 0.0)


@torch.no_grad()
def search_threshold(
    params: Sequence[torch.Tensor],
    loss_fn: Callable[[], float],
    tolerance: float = 0.0,
    steps: int = 12,
    reference: float | None = None,
) -> tuple[float, float]:
    """Bisect the largest global magnitude threshold whose pruning keeps ``loss_fn() <= reference + tolerance``.

    The parameters are restored after every trial; nothing is pruned here (use :func:`prune_below_`).

    Args:
        params: Tensors sharing one threshold.
        loss_fn: Evaluates the model as it currently is (e.g. validation margin loss).
        tolerance: Admissible loss increase.
        steps: Bisection steps; the answer is within ``max|p| / 2**steps`` of the largest admissible threshold
            when admissibility is monotone in the threshold.
        reference: Loss of the unpruned model (evaluated when None).

    Returns:
        The threshold (0.0 when nothing can be pruned) and the reference loss.
    """
    if reference is None:
        reference = float(loss_fn())
    backup = [p.detach().clone() for p in params]
    lo, hi = 0.0, max((float(p.abs().max()) for p in params if p.numel()), default=0.0)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        prune_below_(params, mid)
        admissible = float(loss_fn()) <= reference + tolerance
        for p, b in zip(params, backup):
            p.copy_(b)
        lo, hi = (mid, hi) if admissible else (lo, mid)
    return lo, reference


@torch.no_grad()
def sparsity(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, float]:
    """Fraction of zero entries per tensor and ``"global"`` over all of them."""
    out, zeros, total = {}, 0, 0
    for name, p in named:
        z = int((p == 0).sum())
        out[name] = z / max(p.numel(), 1)
        zeros, total = zeros + z, total + p.numel()
    out["global"] = zeros / max(total, 1)
    return out
