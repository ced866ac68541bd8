"""Resolution-based routing loss."""

from __future__ import annotations

import torch

#: Released defaults: ``a = 1e-3`` (declared as an int there) and ``w = [1, 1.5, 2.23, 3,35, 5]``, where the stray
#: comma turns 3.35 into two entries (3 and 35); the intended five weights are these.
PAPER_BALANCE_WEIGHT = 1e-3
PAPER_RESOLUTION_WEIGHTS = (1.0, 1.5, 2.23, 3.35, 5.0)


def resolution_balancing_loss(probs: torch.Tensor, counts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer load balancing weighted by expert resolution: ``M / (sum c)^2 * sum_i m_i c_i w_i``.

    Args:
        probs: Gate probabilities ``[P, M]`` of the routed points (differentiable).
        counts: Points routed to each expert ``[M]`` (top-k assignments; no gradient).
        weights: Per-expert penalty ``[M]``, larger for high-resolution experts.

    Returns:
        Scalar loss (multiply by the balance coefficient ``a``).
    """
    m = probs.sum(0)
    c = counts.detach().to(probs.dtype)
    total = c.sum().clamp_min(1)
    return probs.shape[-1] / total**2 * (m * c * weights.to(probs)).sum()
