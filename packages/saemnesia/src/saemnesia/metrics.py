"""UnlearnCanvas's object-unlearning metrics as a torchmetrics Metric.

For one erased object ``e`` evaluated on images generated for every (object, style) prompt:

* UA  (unlearning accuracy)      = 1 - object accuracy on the images whose prompt names ``e``;
* IRA (in-domain retain acc.)    = object accuracy on the images of every other object;
* CRA (cross-domain retain acc.) = style accuracy on the images of every other object.

Sequential unlearning erases several objects at once: UA is then averaged over the erased objects and IRA/CRA are
computed on the remaining ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric


class UnlearningAccuracy(Metric):
    """Accumulates classifier predictions on generated images and returns UA, IRA and CRA.

    Args:
        erased: Object ids being erased.
    """

    full_state_update = False

    def __init__(self, erased: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("erased", torch.tensor(list(erased), dtype=torch.long), persistent=False)
        for name in ("erased_correct", "erased_total", "obj_correct", "style_correct", "retain_total"):
            self.add_state(name, default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(
        self, object_pred: torch.Tensor, object_true: torch.Tensor, style_pred: torch.Tensor, style_true: torch.Tensor
    ) -> None:
        """Add a batch of predicted/true object and style ids (all ``[B]``)."""
        is_erased = torch.isin(object_true, self.erased.to(object_true.device))
        obj_ok = (object_pred == object_true).float()
        self.erased_correct += obj_ok[is_erased].sum()
        self.erased_total += is_erased.sum()
        self.obj_correct += obj_ok[~is_erased].sum()
        self.style_correct += (style_pred == style_true).float()[~is_erased].sum()
        self.retain_total += (~is_erased).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"ua", "ira", "cra"}`` in [0, 1] (nan where no image of that kind was seen)."""
        nan = torch.tensor(float("nan"))
        ua = 1 - self.erased_correct / self.erased_total if self.erased_total > 0 else nan
        ira = self.obj_correct / self.retain_total if self.retain_total > 0 else nan
        cra = self.style_correct / self.retain_total if self.retain_total > 0 else nan
        return {"ua": ua, "ira": ira, "cra": cra}


def selection_score(ua: float, ira: float, cra: float, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> float:
    """The weighted UA/IRA/CRA average used to choose erasure parameters per class."""
    return (weights[0] * ua + weights[1] * ira + weights[2] * cra) / sum(weights)


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` ``[N]`` for the boolean labels ``positive`` ``[N]``.

    Mann-Whitney form: the probability that a random positive outscores a random negative, ties counting 1/2
    (average ranks). 0.5 is chance, 1.0 a perfectly selective score.
    """
    scores, positive = scores.double().flatten(), positive.bool().flatten()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = scores.argsort()
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # average the ranks of tied scores: every member of a tie group gets the group's mean rank
    _, group, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts + 1
    mean_rank = (first + first + counts - 1).double() / 2
    ranks[order] = mean_rank[group]
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))
