"""Combining the k fold models: the fold ensemble (average predictions) and the model soup (average weights)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def ensemble_probabilities(probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean of the fold models' predicted probabilities (each ``[N]`` or ``[N, C]``, all the same shape)."""
    if not probs:
        raise ValueError("need at least one model's predictions")
    return torch.stack(list(probs)).mean(0)


def soup(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform model soup: the element-wise mean of floating-point entries of ``state_dicts``.

    Integer entries (BatchNorm's ``num_batches_tracked``) are taken from the first model. All models must share keys
    and shapes, i.e. come from one architecture (and, for a soup that works, from one initialisation).
    """
    if not state_dicts:
        raise ValueError("need at least one state dict")
    keys = list(state_dicts[0])
    for sd in state_dicts[1:]:
        if list(sd) != keys:
            raise ValueError("state dicts have different keys")
    out = {}
    for k in keys:
        first = state_dicts[0][k]
        if first.is_floating_point():
            out[k] = torch.stack([sd[k].to(first.dtype) for sd in state_dicts]).mean(0)
        else:
            out[k] = first.clone()
    return out
