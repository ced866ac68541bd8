"""From reconstruction to anomaly map, threshold and scores (pure torch)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def erode(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Binary erosion of ``mask [N, 1, H, W]`` with a ``size x size`` square; outside the image counts as empty."""
    if size <= 1:
        return mask
    pad = size // 2
    padded = F.pad(mask.float(), (pad, pad, pad, pad), value=0.0)
    return (-F.max_pool2d(-padded, size, stride=1)).to(mask.dtype)


def median_filter(x: torch.Tensor, size: int, dims: int = 3) -> torch.Tensor:
    """Median filter over the last ``dims`` axes of ``x`` (edges replicated, like scipy's ``mode="nearest"``).

    Args:
        x: ``[..., D, H, W]`` (``dims=3``) or ``[..., H, W]`` (``dims=2``).
        size: Odd window side.
        dims: 2 (per slice) or 3 (whole volume).
    """
    if size <= 1:
        return x
    if size % 2 == 0:
        raise ValueError(f"median window must be odd, got {size}")
    pad = size // 2
    lead = x.shape[:-dims]
    flat = x.reshape(-1, 1, *x.shape[-dims:])
    if dims == 3:
        padded = F.pad(flat, (pad,) * 6, mode="replicate")
        win = padded.unfold(2, size, 1).unfold(3, size, 1).unfold(4, size, 1)
    elif dims == 2:
        padded = F.pad(flat, (pad,) * 4, mode="replicate")
        win = padded.unfold(2, size, 1).unfold(3, size, 1)
    else:
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    med = win.reshape(*win.shape[: 2 + dims], -1).median(dim=-1).values
    return med.reshape(*lead, *x.shape[-dims:])


def anomaly_map(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    brain: torch.Tensor,
    *,
    erode_size: int = 3,
    median_size: int = 5,
    median_dims: int = 3,
) -> torch.Tensor:
    """``|x - x_hat|`` inside the eroded brain mask, median filtered, for one volume of slices.

    Args:
        x: Input slices ``[Z, 1, H, W]`` (one volume; ``Z = 1`` for a 2D image).
        x_hat: Reconstruction, same shape.
        brain: Brain mask, same shape.
        erode_size: Square used to erode the brain mask (suppresses the reconstruction error at the brain's rim).
        median_size: Median window side.
        median_dims: 3 for a volume, 2 per slice.

    Returns:
        Anomaly map ``[Z, 1, H, W]``, zero outside the eroded mask.
    """
    inside = erode(brain, erode_size).to(x.dtype)
    diff = (x - x_hat).abs() * inside
    if median_dims == 3:
        diff = median_filter(diff[:, 0], median_size, 3).unsqueeze(1)
    else:
        diff = median_filter(diff, median_size, 2)
    return diff * inside


def dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice ``2|P∩T| / (|P| + |T|)`` of two binary tensors (1 when both are empty)."""
    pred, target = pred.bool(), target.bool()
    denom = pred.sum() + target.sum()
    if denom == 0:
        return torch.tensor(1.0)
    return 2 * (pred & target).sum().float() / denom.float()


def best_dice_threshold(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Exact best-Dice threshold of pooled scores: the ``thr`` maximising Dice of ``scores >= thr`` vs ``labels``.

    Sorting once gives Dice at every distinct score: with the top ``k`` pixels predicted positive,
    ``Dice(k) = 2 TP(k) / (k + P)``; only the last position of each run of tied scores is a realisable cut.

    Args:
        scores: Anomaly scores (any shape).
        labels: Binary ground truth, same shape.

    Returns:
        ``(threshold, dice)``.
    """
    s = scores.flatten().double()
    y = labels.flatten().double()
    order = s.argsort(descending=True)
    s, y = s[order], y[order]
    tp = y.cumsum(0)
    k = torch.arange(1, len(s) + 1, dtype=torch.float64)
    d = 2 * tp / (k + y.sum())
    cut = torch.ones_like(s, dtype=torch.bool)
    cut[:-1] = s[:-1] != s[1:]
    d = torch.where(cut, d, torch.full_like(d, -1.0))
    best = int(d.argmax())
    return float(s[best]), float(d[best])
