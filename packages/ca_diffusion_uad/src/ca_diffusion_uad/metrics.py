"""The paper's scores: per-volume Dice / AUROC / AUPRC at a validation threshold, and NOVA-style box detection."""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric
from torchmetrics.detection import MeanAveragePrecision
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from ca_diffusion_uad.anomaly import dice
from ca_diffusion_uad.boxes import accuracy_at_iou, components_to_boxes


class VolumeMaps(Metric):
    """Collects anomaly maps, lesion masks and evaluation regions of whole volumes (gathered across DDP ranks).

    ``compute()`` returns ``(maps, lesions, regions)``, each ``[V, Z, H, W]``; every volume must have the same shape.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("maps", default=[], dist_reduce_fx="cat")
        self.add_state("lesions", default=[], dist_reduce_fx="cat")
        self.add_state("regions", default=[], dist_reduce_fx="cat")

    def update(self, anomaly: torch.Tensor, lesion: torch.Tensor, region: torch.Tensor) -> None:
        """Add one volume: map, lesion mask and region, each ``[Z, 1, H, W]``."""
        self.maps.append(anomaly[:, 0].float().unsqueeze(0))
        self.lesions.append(lesion[:, 0].bool().unsqueeze(0))
        self.regions.append(region[:, 0].bool().unsqueeze(0))

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        def cat(x):
            return torch.cat(x) if isinstance(x, list) else x

        return cat(self.maps), cat(self.lesions), cat(self.regions)


def segmentation_scores(
    maps: torch.Tensor, lesions: torch.Tensor, regions: torch.Tensor, threshold: float
) -> dict[str, float]:
    """Per-volume Dice at ``threshold`` and per-volume AUROC / AUPRC inside ``regions``, averaged over volumes.

    Args:
        maps: Anomaly maps ``[V, ...]``.
        lesions: Ground truth, same shape.
        regions: Voxels that count (the brain), same shape.
        threshold: Anomaly-map threshold (from the validation set).

    Returns:
        ``dice``, ``auroc``, ``auprc`` (means over volumes with a lesion) and pooled ``auroc_pooled``,
        ``auprc_pooled`` over all region voxels.
    """
    dices, aurocs, auprcs = [], [], []
    for m, y, r in zip(maps, lesions, regions):
        if not y.any():
            continue
        dices.append(float(dice(m >= threshold, y)))
        s, t = m[r], y[r].long()
        if 0 < int(t.sum()) < t.numel():
            aurocs.append(float(binary_auroc(s, t)))
            auprcs.append(float(binary_average_precision(s, t)))

    def mean(v: list[float]) -> float:
        return sum(v) / len(v) if v else math.nan

    s_all, y_all = maps[regions], lesions[regions].long()
    has_both = 0 < int(y_all.sum()) < y_all.numel()
    return {
        "dice": mean(dices),
        "auroc": mean(aurocs),
        "auprc": mean(auprcs),
        "auroc_pooled": float(binary_auroc(s_all, y_all)) if has_both else math.nan,
        "auprc_pooled": float(binary_average_precision(s_all, y_all)) if has_both else math.nan,
    }


def detection_scores(maps: torch.Tensor, lesions: torch.Tensor, threshold: float) -> dict[str, float]:
    """NOVA-style scores of slice-wise boxes: mAP@0.3, mAP@0.5, mAP@[.5:.95] (torchmetrics, COCO) and ACC@50.

    Boxes are the connected components of ``map >= threshold`` (scored by their maximum) and of the lesion mask.

    Args:
        maps: Anomaly maps ``[..., H, W]`` (every leading index is one image).
        lesions: Ground truth, same shape.
        threshold: Anomaly-map threshold.
    """
    maps2d = maps.reshape(-1, *maps.shape[-2:])
    les2d = lesions.reshape(-1, *lesions.shape[-2:])
    preds, targets = [], []
    for m, y in zip(maps2d, les2d):
        boxes, scores = components_to_boxes(m >= threshold, m)
        gt, _ = components_to_boxes(y)
        if len(gt) == 0 and len(boxes) == 0:
            continue
        preds.append({"boxes": boxes, "scores": scores, "labels": torch.zeros(len(boxes), dtype=torch.long)})
        targets.append({"boxes": gt, "labels": torch.zeros(len(gt), dtype=torch.long)})
    if not any(len(t["boxes"]) for t in targets):
        return {"map_30": math.nan, "map_50": math.nan, "map": math.nan, "acc_50": math.nan}
    coco = MeanAveragePrecision(iou_type="bbox")
    at30 = MeanAveragePrecision(iou_type="bbox", iou_thresholds=[0.3])
    coco.update(preds, targets)
    at30.update(preds, targets)
    res, res30 = coco.compute(), at30.compute()
    return {
        "map_30": float(res30["map"]),
        "map_50": float(res["map_50"]),
        "map": float(res["map"]),
        "acc_50": accuracy_at_iou([p["boxes"] for p in preds], [t["boxes"] for t in targets], 0.5),
    }
