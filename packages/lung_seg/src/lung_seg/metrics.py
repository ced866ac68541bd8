"""The paper's metrics (Dice and IoU per slice) and the per-nodule evaluation by diameter."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torchmetrics import Metric

#: Lower edges (mm) of the diameter bins of the per-nodule evaluation: [0, 6), [6, 10), [10, 20), [20, inf).
DEFAULT_BINS_MM = (0.0, 6.0, 10.0, 20.0)


def dice_iou(pred: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothed Dice and IoU per image, as the paper computes them.

    ``dice = (2 |P ∩ T| + s) / (|P| + |T| + s)`` and ``iou = (|P ∩ T| + s) / (|P ∪ T| + s)``, so an empty prediction
    on an empty slice scores 1.

    Args:
        pred: Binary predictions ``[B, ...]`` (bool or 0/1).
        target: Binary ground truth of the same shape.
        smooth: The additive smoothing ``s`` (the paper: 1).

    Returns:
        Dice ``[B]`` and IoU ``[B]``.
    """
    p, t = pred.flatten(1).float(), target.flatten(1).float()
    inter = (p * t).sum(1)
    total = p.sum(1) + t.sum(1)
    return (2 * inter + smooth) / (total + smooth), (inter + smooth) / (total - inter + smooth)


class DiceIoU(Metric):
    """Mean per-slice Dice and IoU of sigmoid outputs thresholded at ``threshold`` (DDP-safe sums).

    Args:
        threshold: Probability threshold (the paper: 0.5).
        smooth: Additive smoothing (the paper: 1).
    """

    full_state_update = False

    def __init__(self, threshold: float = 0.5, smooth: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.threshold, self.smooth = threshold, smooth
        self.add_state("dice_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("iou_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of logits ``[B, 1, H, W]`` and binary targets of the same shape."""
        dice, iou = dice_iou(torch.sigmoid(logits) > self.threshold, target > 0.5, self.smooth)
        self.dice_sum += dice.double().sum()
        self.iou_sum += iou.double().sum()
        self.count += dice.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp_min(1)
        return {"dice": (self.dice_sum / n).float(), "iou": (self.iou_sum / n).float()}


def equivalent_diameter(voxels: int | np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Diameter (mm) of the sphere with the volume of ``voxels`` voxels of size ``spacing`` (mm)."""
    volume = np.asarray(voxels, dtype=np.float64) * float(np.prod(spacing))
    return np.cbrt(6.0 * volume / np.pi)


def diameter_bin_labels(bins: Sequence[float] = DEFAULT_BINS_MM) -> list[str]:
    """Readable names of the bins: ``"<6"``, ``"6-10"``, ..., ``">=20"``."""
    inner = [f"<{hi:g}" if lo <= 0 else f"{lo:g}-{hi:g}" for lo, hi in itertools.pairwise(bins)]
    return [*inner, f">={bins[-1]:g}"]


def diameter_bin(diameter: np.ndarray, bins: Sequence[float] = DEFAULT_BINS_MM) -> np.ndarray:
    """Index of the bin of each diameter (-1 below the first edge)."""
    return np.searchsorted(np.asarray(bins), np.asarray(diameter), side="right") - 1


@dataclass
class NoduleScores:
    """Per-nodule results of one scan.

    Attributes:
        diameter_mm: Equivalent diameter of each ground-truth nodule ``[N]``.
        dice: Dice of each nodule with the predicted components touching it ``[N]`` (0 when missed).
        detected: Whether any predicted voxel overlaps the nodule ``[N]``.
        false_positives: Predicted components touching no nodule.
    """

    diameter_mm: np.ndarray
    dice: np.ndarray
    detected: np.ndarray
    false_positives: int


def score_nodules(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> NoduleScores:
    """Match predicted and true nodules of one scan by 3D connected components (26-connectivity).

    A true nodule is detected when a predicted component overlaps it; its Dice is computed against the union of the
    predicted components that overlap it, so a large false positive elsewhere does not lower it (it is counted as a
    false positive instead).

    Args:
        pred: Binary prediction ``[Z, H, W]``.
        truth: Binary ground truth ``[Z, H, W]``.
        spacing: ``(dz, dy, dx)`` in mm.
    """
    structure = np.ones((3, 3, 3), dtype=bool)
    true_lab, n_true = ndimage.label(truth > 0, structure)
    pred_lab, n_pred = ndimage.label(pred > 0, structure)
    sizes = np.bincount(true_lab.ravel(), minlength=n_true + 1)[1:]
    dice = np.zeros(n_true)
    detected = np.zeros(n_true, dtype=bool)
    matched = np.zeros(n_pred + 1, dtype=bool)
    for k, _sl in enumerate(ndimage.find_objects(true_lab), start=1):
        nodule = true_lab == k
        touching = np.unique(pred_lab[nodule])
        touching = touching[touching > 0]
        if touching.size == 0:
            continue
        detected[k - 1] = True
        matched[touching] = True
        region = np.isin(pred_lab, touching)
        dice[k - 1] = 2.0 * np.count_nonzero(region & nodule) / (np.count_nonzero(region) + sizes[k - 1])
    false_positives = int(n_pred - matched[1:].sum())
    return NoduleScores(equivalent_diameter(sizes, spacing), dice, detected, false_positives)


def summarise_by_bin(scores: Sequence[NoduleScores], bins: Sequence[float] = DEFAULT_BINS_MM) -> list[dict]:
    """Mean per-nodule Dice and detection rate in each diameter bin, over all scans."""
    diameter = np.concatenate([s.diameter_mm for s in scores]) if scores else np.zeros(0)
    dice = np.concatenate([s.dice for s in scores]) if scores else np.zeros(0)
    detected = np.concatenate([s.detected for s in scores]) if scores else np.zeros(0, bool)
    index = diameter_bin(diameter, bins)
    rows = []
    for b, label in enumerate(diameter_bin_labels(bins)):
        sel = index == b
        n = int(sel.sum())
        rows.append(
            {
                "bin": label,
                "nodules": n,
                "dice": float(dice[sel].mean()) if n else float("nan"),
                "detection": float(detected[sel].mean()) if n else float("nan"),
            }
        )
    return rows
