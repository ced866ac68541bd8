"""FairKL (Barbano et al., "Unbiased Supervised Contrastive Learning", ICLR 2023) as a standalone loss.

For every ordered pair ``(i, j)``, ``i != j``, of a batch, take the distance ``d_ij`` between the L2-normalised
features. Pairs split four ways by target (positive: same label) and bias attribute (aligned: same bias value, e.g.
the same hospital; conflicting: a different one). FairKL models each of the four sets of distances as a Gaussian and
asks that a bias-aligned pair look no closer or farther than a bias-conflicting pair of the same kind::

    FairKL = KL(N(mu_a+, s_a+^2) || N(mu_c+, s_c+^2)) + KL(N(mu_a-, s_a-^2) || N(mu_c-, s_c-^2))
    KL(N(m1, v1) || N(m2, v2)) = 0.5 * (v1 / v2 + (m1 - m2)^2 / v2 - 1 + log(v2 / v1))

With the bias attribute carrying no information about the features the loss is 0; when the encoder clusters by
hospital, aligned pairs are closer than conflicting ones and the loss grows.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def gaussian_kl(m1: torch.Tensor, v1: torch.Tensor, m2: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """``KL(N(m1, v1) || N(m2, v2))`` for means ``m`` and variances ``v`` (broadcasting)."""
    return 0.5 * (v1 / v2 + (m1 - m2) ** 2 / v2 - 1 + torch.log(v2 / v1))


def pair_distances(features: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``[B, B]`` between L2-normalised rows of ``features`` ``[B, D]`` (in [0, 4])."""
    z = F.normalize(features, dim=1)
    return (2 - 2 * z @ z.T).clamp(min=0)


def _masked_stats(d: torch.Tensor, mask: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) variance of ``d[mask]``, plus ``eps`` on the variance."""
    w = mask.to(d.dtype)
    n = w.sum().clamp(min=1)
    mean = (d * w).sum() / n
    var = (((d - mean) ** 2) * w).sum() / n
    return mean, var + eps


def fairkl(features: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor, *, eps: float = 1e-4) -> torch.Tensor:
    """FairKL regulariser.

    Args:
        features: ``[B, D]`` embeddings (normalised inside).
        labels: ``[B]`` integer targets.
        bias: ``[B]`` integer bias attribute (e.g. hospital).
        eps: Added to every variance (keeps the KL finite for sets with one distinct distance).

    Returns:
        Scalar loss. A pair kind (positive or negative) with an empty aligned or conflicting set contributes 0.
    """
    if features.ndim != 2 or len(labels) != len(features) or len(bias) != len(features):
        raise ValueError(f"expected features [B, D] and labels/bias [B]; got {tuple(features.shape)}")
    d = pair_distances(features)
    off_diag = ~torch.eye(len(d), dtype=torch.bool, device=d.device)
    same_y = labels[:, None] == labels[None, :]
    same_b = bias[:, None] == bias[None, :]
    loss = d.new_zeros(())
    for same in (same_y, ~same_y):
        aligned, conflicting = same & same_b & off_diag, same & ~same_b & off_diag
        if not aligned.any() or not conflicting.any():
            continue
        m_a, v_a = _masked_stats(d, aligned, eps)
        m_c, v_c = _masked_stats(d, conflicting, eps)
        loss = loss + gaussian_kl(m_a, v_a, m_c, v_c)
    return loss


class FairKL(nn.Module):
    """:func:`fairkl` as a module, e.g. ``loss = ce + lam * FairKL()(z, y, hospital)``.

    Args:
        eps: Added to every variance.
    """

    def __init__(self, eps: float = 1e-4):
        super().__init__()
        self.eps = eps

    def forward(self, features: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Scalar FairKL of ``features`` ``[B, D]`` with ``labels`` and ``bias`` ``[B]``."""
        return fairkl(features, labels, bias, eps=self.eps)
