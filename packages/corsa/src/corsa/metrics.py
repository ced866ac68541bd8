"""Screening metrics: balanced accuracy, ROC-AUC, sensitivity, specificity, overall and per institution.

The per-sample functions use torchmetrics' functional API; :class:`ScreeningMetrics` accumulates predictions across
batches and processes (DDP-safe ``cat`` states) and returns every metric overall, per group (hospital) and for the
bias-aligned / bias-conflicting subsets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc, binary_recall, binary_specificity
from torchmetrics.utilities import dim_zero_cat


def screening_metrics(prob: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Balanced accuracy, AUC, sensitivity, specificity and accuracy of positive-class probabilities ``[N]``.

    AUC is NaN when only one class is present.
    """
    target = target.long()
    sens = binary_recall(prob, target, threshold=threshold).item()
    spec = binary_specificity(prob, target, threshold=threshold).item()
    both = bool(target.min() != target.max())
    return {
        "bacc": 0.5 * (sens + spec) if both else float("nan"),
        "auc": binary_auroc(prob, target).item() if both else float("nan"),
        "sens": sens if target.any() else float("nan"),
        "spec": spec if (target == 0).any() else float("nan"),
        "acc": ((prob >= threshold).long() == target).float().mean().item(),
    }


def bootstrap_ci(
    prob: torch.Tensor, target: torch.Tensor, metric: str, *, n: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of one :func:`screening_metrics` entry (cases resampled)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = torch.from_numpy(rng.integers(0, len(target), len(target)))
        v = screening_metrics(prob[idx], target[idx])[metric]
        if v == v:
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bias_aligned(target: torch.Tensor, group: torch.Tensor, majority_label: Sequence[int]) -> torch.Tensor:
    """``[N]`` bool: the sample's label is its group's majority label in training (bias-aligned)."""
    return target.long() == torch.as_tensor(majority_label, dtype=torch.long)[group.long()]


def grouped_metrics(
    prob: torch.Tensor,
    target: torch.Tensor,
    group: torch.Tensor,
    group_names: Sequence[str],
    majority_label: Sequence[int] | None = None,
) -> dict[str, float]:
    """:func:`screening_metrics` overall (``all/...``), per group (``<name>/...``) and on bias subsets.

    Given each group's majority label in training, also ``aligned/acc`` and ``conflicting/acc``: the accuracy on
    bias-aligned samples (label = the group's majority label) and on bias-conflicting ones.
    """
    out = {f"all/{k}": v for k, v in screening_metrics(prob, target).items()}
    for g, name in enumerate(group_names):
        sel = group == g
        if sel.any():
            out.update({f"{name}/{k}": v for k, v in screening_metrics(prob[sel], target[sel]).items()})
    if majority_label is not None:
        aligned = bias_aligned(target, group, majority_label)
        correct = ((prob >= 0.5).long() == target.long()).float()
        for name, sel in (("aligned", aligned), ("conflicting", ~aligned)):
            out[f"{name}/acc"] = correct[sel].mean().item() if sel.any() else float("nan")
    return out


class ScreeningMetrics(Metric):
    """Accumulates ``(prob, target, group)`` over batches and processes; ``compute()`` is :func:`grouped_metrics`.

    Args:
        group_names: Name of each group index (hospital).
        majority_label: Each group's majority label in training (for aligned / conflicting accuracy), or None.
    """

    full_state_update = False

    def __init__(self, group_names: Sequence[str], majority_label: Sequence[int] | None = None):
        super().__init__()
        self.group_names, self.majority_label = list(group_names), majority_label
        for name in ("prob", "target", "group"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, prob: torch.Tensor, target: torch.Tensor, group: torch.Tensor) -> None:
        self.prob.append(prob.detach().float())
        self.target.append(target.detach().long())
        self.group.append(group.detach().long())

    def compute(self) -> dict[str, float]:
        return grouped_metrics(
            dim_zero_cat(self.prob),
            dim_zero_cat(self.target),
            dim_zero_cat(self.group),
            self.group_names,
            self.majority_label,
        )
