"""The paper's metrics as torchmetrics Metrics: Relevance Mass / Rank Accuracy (Arras et al.) and CorLoc."""

from __future__ import annotations

import torch
from torchmetrics import Metric


def minmax(heatmaps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalisation of ``[B, H, W]`` heatmaps to [0, 1] (constant maps become 0)."""
    flat = heatmaps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(torch.finfo(flat.dtype).tiny)).view_as(heatmaps)


def relevance_mass_accuracy(heatmaps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of positive relevance inside the mask, per image.

    Args:
        heatmaps: ``[B, H, W]`` relevance.
        masks: ``[B, H, W]`` ground-truth object masks (bool or 0/1).

    Returns:
        ``[B]`` in [0, 1]; 0 where an image has no positive relevance.
    """
    pos = heatmaps.clamp_min(0).flatten(1)
    inside = (pos * masks.flatten(1).to(pos.dtype)).sum(1)
    total = pos.sum(1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(pos.dtype).tiny), torch.zeros_like(total))


def relevance_rank_accuracy(heatmaps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of the K most relevant pixels that lie inside the mask, K = mask size, per image.

    Args:
        heatmaps: ``[B, H, W]`` relevance.
        masks: ``[B, H, W]`` ground-truth object masks (bool or 0/1).

    Returns:
        ``[B]`` in [0, 1]; 0 for an empty mask.
    """
    flat, m = heatmaps.flatten(1), masks.flatten(1).bool()
    k = m.sum(1)
    order = flat.argsort(dim=1, descending=True, stable=True)
    # rank < K  <=>  the pixel is among the top K of its image
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    hits = ((rank < k[:, None]) & m).sum(1)
    return torch.where(k > 0, hits / k.clamp_min(1), torch.zeros_like(hits, dtype=torch.float)).float()


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching boxes ``[..., 4]`` in ``(x0, y0, x1, y1)`` pixel-edge coordinates, shape ``[...]``."""
    w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    inter = w * h
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp_min(1e-12)


class _MeanOfScores(Metric):
    """Mean of a per-image score over every image seen (summed across processes under DDP)."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _add(self, scores: torch.Tensor) -> None:
        self.total += scores.double().sum()
        self.count += scores.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()


class RelevanceMassAccuracy(_MeanOfScores):
    """Mean Relevance Mass Accuracy over images (heatmaps min-max normalised first unless ``normalize=False``).

    Args:
        normalize: Min-max normalise each heatmap before scoring, as the paper does.
    """

    def __init__(self, normalize: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.normalize = normalize

    def update(self, heatmaps: torch.Tensor, masks: torch.Tensor) -> None:
        """Add ``[B, H, W]`` heatmaps scored against ``[B, H, W]`` masks."""
        self._add(relevance_mass_accuracy(minmax(heatmaps) if self.normalize else heatmaps, masks))


class RelevanceRankAccuracy(_MeanOfScores):
    """Mean Relevance Rank Accuracy over images (ranking is invariant to min-max normalisation)."""

    def update(self, heatmaps: torch.Tensor, masks: torch.Tensor) -> None:
        """Add ``[B, H, W]`` heatmaps scored against ``[B, H, W]`` masks."""
        self._add(relevance_rank_accuracy(heatmaps, masks))


class CorLoc(_MeanOfScores):
    """Correct localisation: share of images whose predicted box has IoU > ``threshold`` with any ground-truth box.

    Args:
        threshold: IoU threshold (0.5 in LOST and the paper).
    """

    def __init__(self, threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold

    def update(self, boxes: torch.Tensor, gt_boxes: torch.Tensor) -> None:
        """Add predicted ``[B, 4]`` boxes against ground truth ``[B, M, 4]`` (rows with x1 <= x0 are padding)."""
        iou = box_iou(boxes[:, None, :].float(), gt_boxes.float())
        valid = gt_boxes[..., 2] > gt_boxes[..., 0]
        self._add(((iou > self.threshold) & valid).any(1).float())
