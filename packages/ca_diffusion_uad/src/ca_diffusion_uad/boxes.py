"""NOVA-style detection: boxes from a thresholded anomaly map, IoU, and ACC@IoU."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage


def components_to_boxes(binary: torch.Tensor, scores: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes around the 8-connected components of one 2D binary map.

    Args:
        binary: ``[H, W]`` binary map.
        scores: ``[H, W]`` anomaly map; a box scores the maximum of it inside its component (1 without it).

    Returns:
        Boxes ``[K, 4]`` as ``(x1, y1, x2, y2)`` pixel-edge coordinates (float32) and scores ``[K]``.
    """
    arr = binary.detach().cpu().numpy().astype(bool)
    labels, _ = ndimage.label(arr, structure=np.ones((3, 3), dtype=bool))
    boxes, out_scores = [], []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        ys, xs = sl
        boxes.append([xs.start, ys.start, xs.stop, ys.stop])
        if scores is None:
            out_scores.append(1.0)
        else:
            region = torch.from_numpy(labels[sl] == k)
            out_scores.append(float(scores.detach().cpu()[sl][region].max()))
    return torch.tensor(boxes, dtype=torch.float32).view(-1, 4), torch.tensor(out_scores, dtype=torch.float32)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``[N, M]`` of boxes ``a [N, 4]`` and ``b [M, 4]`` in ``(x1, y1, x2, y2)``."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp_min(1e-12)


def accuracy_at_iou(preds: list[torch.Tensor], targets: list[torch.Tensor], iou: float = 0.5) -> float:
    """ACC@IoU: the share of images with a lesion where some predicted box overlaps some true box by ``>= iou``.

    Args:
        preds: Predicted boxes ``[K_i, 4]`` per image.
        targets: True boxes ``[M_i, 4]`` per image; images without any are skipped.
        iou: IoU needed for a hit.
    """
    hits, n = 0, 0
    for p, t in zip(preds, targets):
        if len(t) == 0:
            continue
        n += 1
        hits += bool(len(p)) and bool((box_iou(p, t) >= iou).any())
    return hits / n if n else float("nan")
