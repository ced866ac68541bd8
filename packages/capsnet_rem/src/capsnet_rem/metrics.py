"""The REM paper's metrics as torchmetrics Metrics: parse trees per class and their entropy."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from capsnet_rem.capsules import bin_index


def entropy_bits(counts: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy (base 2) of the frequencies ``counts`` along ``dim`` (empty bins count 0)."""
    counts = counts.to(torch.float64)
    p = counts / counts.sum(dim, keepdim=True).clamp_min(1)
    return -(torch.where(p > 0, p * torch.log2(p), torch.zeros_like(p))).sum(dim)


def parse_tree_stats(keys: torch.Tensor, preds: torch.Tensor, num_classes: int, bins: int) -> dict[str, torch.Tensor]:
    """Parse trees and entropies per predicted class.

    Args:
        keys: Binned couplings ``[N, I]`` (bin index per primary capsule) toward each sample's predicted class.
        preds: Predicted classes ``[N]``.
        num_classes: ``J``.
        bins: Number of bins the keys index.

    Returns:
        ``trees`` ``[J]`` (distinct keys per class), ``entropy`` ``[J]`` (bits, of the key frequencies),
        ``coef_entropy`` ``[J]`` (entropy of each capsule's bin over the class's samples, averaged over capsules),
        ``count`` ``[J]`` (samples per class); classes never predicted get NaN.
    """
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    trees, ent, coef, count = [], [], [], []
    for j in range(num_classes):
        k = keys[preds == j]
        count.append(torch.tensor(float(len(k)), dtype=torch.float64))
        if len(k) == 0:
            trees.append(nan), ent.append(nan), coef.append(nan)
            continue
        _, freq = torch.unique(k, dim=0, return_counts=True)
        trees.append(torch.tensor(float(len(freq)), dtype=torch.float64))
        ent.append(entropy_bits(freq))
        hist = torch.zeros(k.shape[1], bins, dtype=torch.float64)
        hist.scatter_add_(1, k.long().T, torch.ones(k.shape[1], len(k), dtype=torch.float64))
        coef.append(entropy_bits(hist).mean())
    return {
        "trees": torch.stack(trees),
        "entropy": torch.stack(ent),
        "coef_entropy": torch.stack(coef),
        "count": torch.stack(count),
    }


class ParseTrees(Metric):
    """Distinct parse trees per predicted class and their entropy (REM's Tables).

    The parse tree of a sample is the tuple of its last-iteration coupling coefficients from every primary capsule
    to its PREDICTED class, each replaced by its bin index (11 bins centred at 0, 0.1, ..., 1 by default).

    Args:
        num_classes: Number of class capsules.
        bins: Number of bins of the coupling coefficients.
    """

    full_state_update = False

    def __init__(self, num_classes: int, bins: int = 11, **kwargs):
        super().__init__(**kwargs)
        if bins > 256:
            raise ValueError("at most 256 bins (keys are stored as uint8)")
        self.num_classes, self.bins = num_classes, bins
        self.add_state("keys", default=[], dist_reduce_fx="cat")
        self.add_state("preds", default=[], dist_reduce_fx="cat")

    def update(self, coupling: torch.Tensor, preds: torch.Tensor) -> None:
        """Add couplings ``[B, I, J]`` and predicted classes ``[B]``."""
        c = coupling.detach().gather(2, preds.view(-1, 1, 1).expand(-1, coupling.shape[1], 1)).squeeze(2)
        self.keys.append(bin_index(c, self.bins).to(torch.uint8))
        self.preds.append(preds.detach())

    def compute(self) -> dict[str, torch.Tensor]:
        """Per-class tensors (see :func:`parse_tree_stats`) plus their means and stds over predicted classes."""
        stats = parse_tree_stats(
            dim_zero_cat(self.keys).cpu(), dim_zero_cat(self.preds).cpu(), self.num_classes, self.bins
        )
        for name in ("trees", "entropy", "coef_entropy"):
            seen = stats[name][~stats[name].isnan()]
            stats[f"{name}_mean"] = seen.mean()
            stats[f"{name}_std"] = seen.std(unbiased=False)
        return stats
