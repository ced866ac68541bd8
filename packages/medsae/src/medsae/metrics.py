"""Interpretability metrics of latent units (SAE latents or raw embedding dimensions).

Shapes: activations ``a`` ``[N, K]`` (N images, K units), image embeddings ``e`` ``[N, d]``, binary labels ``y``
``[N, C]``. Functions compute on full matrices; the :class:`torchmetrics.Metric` classes stream over batches with
sufficient statistics in float64 (they sum across processes under DDP).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric


# ------------------------------------------------------------------------------------------- monosemanticity
def minmax_scale(a: Tensor) -> Tensor:
    """Scale each column of ``a`` ``[N, K]`` to [0, 1]; constant columns become NaN (undefined)."""
    lo, hi = a.min(0).values, a.max(0).values
    span = hi - lo
    return (a - lo) / torch.where(span > 0, span, torch.nan)


def monosemanticity(a: Tensor, e: Tensor) -> Tensor:
    """Monosemanticity score per unit in O(N K d) (Pach et al., 2025).

    ``MS_k = sum_{i<j} a_ik a_jk cos(e_i, e_j) / sum_{i<j} a_ik a_jk`` with ``a`` min-max scaled per unit. With
    ``u_i = e_i / |e_i|`` the pair sums are ``(|sum_i a_i u_i|^2 - sum_i a_i^2) / 2`` and
    ``((sum_i a_i)^2 - sum_i a_i^2) / 2``, so no N x N matrix is needed.

    Args:
        a: Activations ``[N, K]``.
        e: Embeddings ``[N, d]`` whose cosine similarity measures how alike two images are.

    Returns:
        ``[K]`` float64; NaN for dead or constant units (reported separately by callers).
    """
    s = minmax_scale(a.double())
    u = torch.nn.functional.normalize(e.double(), dim=1)
    sq = s.pow(2).sum(0)
    num = (s.T @ u).pow(2).sum(1) - sq
    den = s.sum(0).pow(2) - sq
    return num / torch.where(den > 0, den, torch.nan)


def monosemanticity_pairwise(a: Tensor, e: Tensor) -> Tensor:
    """The same score from the explicit N x N pair sum (O(N^2 K); reference for tests and the benchmark)."""
    s = minmax_scale(a.double())
    u = torch.nn.functional.normalize(e.double(), dim=1)
    cos = torch.triu(u @ u.T, diagonal=1)
    pairs = torch.triu(torch.ones_like(cos), diagonal=1)
    num = torch.einsum("ik,ij,jk->k", s, cos, s)
    den = torch.einsum("ik,ij,jk->k", s, pairs, s)
    return num / torch.where(den > 0, den, torch.nan)


class Monosemanticity(Metric):
    """Streaming monosemanticity score in one pass (float64 sufficient statistics).

    Min-max scaling needs the global minimum ``m``, unknown until the end; but with ``s = (a - m) / r`` every
    needed sum expands into sums of raw ``a`` (``sum a u``, ``sum u``, ``sum a``, ``sum a^2``, ``N``) and ``m``,
    and ``r`` cancels in the ratio. ``compute()`` returns ``[K]`` scores (NaN: undefined).

    Args:
        num_units: ``K``.
        dim: Embedding width ``d``.
    """

    full_state_update = False

    def __init__(self, num_units: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        f64 = torch.float64
        self.add_state("sum_au", torch.zeros(num_units, dim, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_u", torch.zeros(dim, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_a", torch.zeros(num_units, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_aa", torch.zeros(num_units, dtype=f64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("lo", torch.full((num_units,), math.inf, dtype=f64), dist_reduce_fx="min")
        self.add_state("hi", torch.full((num_units,), -math.inf, dtype=f64), dist_reduce_fx="max")

    def update(self, a: Tensor, e: Tensor) -> None:
        a, u = a.double(), torch.nn.functional.normalize(e.double(), dim=1)
        self.sum_au += a.T @ u
        self.sum_u += u.sum(0)
        self.sum_a += a.sum(0)
        self.sum_aa += a.pow(2).sum(0)
        self.n += a.shape[0]
        self.lo = torch.minimum(self.lo, a.min(0).values)
        self.hi = torch.maximum(self.hi, a.max(0).values)

    def compute(self) -> Tensor:
        m = self.lo
        # sums of the shifted activations (a - m); the common 1/r^2 factor cancels
        s_u = self.sum_au - m[:, None] * self.sum_u
        s_1 = self.sum_a - self.n * m
        s_2 = self.sum_aa - 2 * m * self.sum_a + self.n * m.pow(2)
        num = s_u.pow(2).sum(1) - s_2
        den = s_1.pow(2) - s_2
        ok = (self.hi > self.lo) & (den > 0)
        return torch.where(ok, num / torch.where(ok, den, 1.0), torch.nan)


# ------------------------------------------------------------------------------------ label correlation / F1
def pearson(a: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation ``[K, C]`` between each unit's activations and each binary label (NaN if constant)."""
    a, y = a.double(), y.double()
    a, y = a - a.mean(0), y - y.mean(0)
    den = a.norm(dim=0)[:, None] * y.norm(dim=0)[None, :]
    return (a.T @ y) / torch.where(den > 0, den, torch.nan)


class LabelCorrelation(Metric):
    """Streaming Pearson correlation ``[K, C]`` between unit activations and binary labels.

    Args:
        num_units: ``K``.
        num_labels: ``C``.
    """

    full_state_update = False

    def __init__(self, num_units: int, num_labels: int, **kwargs):
        super().__init__(**kwargs)
        f64 = torch.float64
        for name, shape in (
            ("sa", (num_units,)),
            ("saa", (num_units,)),
            ("sy", (num_labels,)),
            ("syy", (num_labels,)),
            ("say", (num_units, num_labels)),
        ):
            self.add_state(name, torch.zeros(shape, dtype=f64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros((), dtype=f64), dist_reduce_fx="sum")

    def update(self, a: Tensor, y: Tensor) -> None:
        a, y = a.double(), y.double()
        self.sa += a.sum(0)
        self.saa += a.pow(2).sum(0)
        self.sy += y.sum(0)
        self.syy += y.pow(2).sum(0)
        self.say += a.T @ y
        self.n += a.shape[0]

    def compute(self) -> Tensor:
        cov = self.say - self.sa[:, None] * self.sy[None, :] / self.n
        var_a = (self.saa - self.sa.pow(2) / self.n).clamp_min(0)
        var_y = (self.syy - self.sy.pow(2) / self.n).clamp_min(0)
        den = (var_a[:, None] * var_y[None, :]).sqrt()
        return cov / torch.where(den > 0, den, torch.nan)


def firing(a: Tensor, top_frac: float = 0.3) -> Tensor:
    """Bool ``[N, K]``: unit k fires on image i when ``a_ik`` is in the top ``top_frac`` of k's positive values."""
    pos = (a > 0).sum(0)
    ranked = a.sort(0, descending=True).values
    cut = (torch.ceil(top_frac * pos.double()).long() - 1).clamp_min(0)
    thresh = ranked.gather(0, cut[None, :])
    return (a >= thresh) & (a > 0)


def firing_scores(
    a: Tensor, y: Tensor, top_frac: float = 0.3, l0_min: float = 15, l0_max: float = 300
) -> dict[str, Tensor]:
    """Precision, recall and F1 ``[K, C]`` of units "firing" (top 30% rule) as detectors of each label.

    ``precision = (F / sum F)^T Y`` (share of a unit's firing images carrying the label), ``recall =
    F^T (Y / sum Y)`` (share of the label's images on which the unit fires). Units are kept only when their L0 (number
    of images with a positive activation) satisfies ``l0_min < L0 < l0_max``.

    Returns:
        ``precision``, ``recall``, ``f1`` (``[K, C]`` float64, NaN where undefined) and ``keep`` (bool ``[K]``).
    """
    fire, y = firing(a, top_frac).double(), y.double()
    n_fire, n_pos = fire.sum(0), y.sum(0)
    precision = fire.T @ y / torch.where(n_fire > 0, n_fire, torch.nan)[:, None]
    recall = fire.T @ y / torch.where(n_pos > 0, n_pos, torch.nan)[None, :]
    f1 = 2 * precision * recall / (precision + recall)
    f1 = torch.where((precision + recall) == 0, 0.0, f1)
    l0 = (a > 0).sum(0)
    return {"precision": precision, "recall": recall, "f1": f1, "keep": (l0 > l0_min) & (l0 < l0_max)}


# ------------------------------------------------------------------------------------------------- entropy
def label_entropy(corr: Tensor, alive_thresh: float = 0.2) -> tuple[Tensor, Tensor]:
    """Per-unit entropy of its |correlation| profile over the labels, and whether it is "alive".

    ``p_c = |corr_c| / sum_c |corr_c|``, ``H = -sum_c p_c log p_c`` (natural log; 0 log 0 = 0). Alive: ``max_c
    |corr_c| > alive_thresh``.

    Args:
        corr: Correlations ``[K, C]`` (NaN treated as 0).
        alive_thresh: Alive rule threshold.

    Returns:
        ``H`` ``[K]`` (NaN for units with no correlation at all) and ``alive`` bool ``[K]``.
    """
    c = corr.double().nan_to_num(0.0).abs()
    total = c.sum(1, keepdim=True)
    p = c / torch.where(total > 0, total, torch.nan)
    h = -torch.xlogy(p, p).sum(1)
    return h, c.max(1).values > alive_thresh


def per_class_top(corr: Tensor, entropy: Tensor) -> dict[str, Tensor]:
    """For each label the unit with the largest |correlation|: its index, |correlation| and entropy (``[C]``)."""
    c = corr.double().nan_to_num(0.0).abs()
    best = c.argmax(0)
    return {"unit": best, "corr": c.gather(0, best[None]).squeeze(0), "entropy": entropy[best]}


def rank_normalised(scores: dict[str, Tensor], higher_is_better: bool = True) -> dict[str, float]:
    """Mean over classes of each model's rank among the models, scaled to [0, 1] (1: best on every class).

    Args:
        scores: Model name -> per-class scores ``[C]`` (the same classes for every model).
        higher_is_better: Direction of the score.

    Returns:
        Model name -> mean normalised rank (ties share the mean of their ranks).
    """
    names = list(scores)
    table = torch.stack([scores[n].double() for n in names])  # [M, C]
    if not higher_is_better:
        table = -table
    m = len(names)
    if m == 1:
        return {names[0]: 1.0}
    # rank = number of models strictly worse + half the ties (excluding itself): 0 (worst) .. m-1 (best)
    worse = (table[:, None, :] > table[None, :, :]).sum(1).double()
    ties = (table[:, None, :] == table[None, :, :]).sum(1).double() - 1
    ranks = (worse + ties / 2) / (m - 1)
    return {n: float(ranks[i].mean()) for i, n in enumerate(names)}


# ---------------------------------------------------------------------------------------- standard SAE metrics
class L0(Metric):
    """Mean number of non-zero latents per sample."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("nonzero", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, f: Tensor) -> None:
        self.nonzero += (f != 0).sum()
        self.n += f.shape[0]

    def compute(self) -> Tensor:
        return self.nonzero / self.n


class FractionVarianceUnexplained(Metric):
    """``sum |x - x_hat|^2 / sum |x - mean(x)|^2`` over the whole evaluation set (1 - explained variance).

    Args:
        dim: Input width ``d``.
    """

    full_state_update = False

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        f64 = torch.float64
        self.add_state("err", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_x", torch.zeros(dim, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_xx", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros((), dtype=f64), dist_reduce_fx="sum")

    def update(self, x: Tensor, x_hat: Tensor) -> None:
        x, x_hat = x.double(), x_hat.double()
        self.err += (x - x_hat).pow(2).sum()
        self.sum_x += x.sum(0)
        self.sum_xx += x.pow(2).sum()
        self.n += x.shape[0]

    def compute(self) -> Tensor:
        total = self.sum_xx - self.sum_x.pow(2).sum() / self.n
        return self.err / total


class DeadLatents(Metric):
    """Fraction of latents that never fire on the evaluation set.

    Args:
        num_latents: ``m``.
    """

    full_state_update = False

    def __init__(self, num_latents: int, **kwargs):
        super().__init__(**kwargs)
        self.add_state("fired", torch.zeros(num_latents, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, f: Tensor) -> None:
        self.fired += (f != 0).sum(0)

    def compute(self) -> Tensor:
        return (self.fired == 0).double().mean()
