"""3DGS-MCMC (Kheradmand et al., 2024) in pure torch: relocation of dead Gaussians, position noise, regularisers.

gsplat's MCMC strategy computes the relocated opacity and scale in a CUDA kernel; :func:`relocation_update` is the
same closed form written in torch, so the CPU path and the GPU path train the same way.
"""

from __future__ import annotations

import math

import torch

from gode import _gsplat


def relocation_update(
    opacities: torch.Tensor, scales: torch.Tensor, copies: torch.Tensor, n_max: int = 51
) -> tuple[torch.Tensor, torch.Tensor]:
    """Opacity and scale of each of ``n`` copies that together render like the original Gaussian (MCMC eq. 9).

    ``o' = 1 - (1 - o)^(1/n)`` and ``s' = o s / sum_{i=1..n} sum_{k=0..i-1} C(i-1, k) (-1)^k o'^(k+1) / sqrt(k+1)``.

    Args:
        opacities: Opacities ``[M]`` of the Gaussians being split.
        scales: Their scales ``[M, 3]``.
        copies: Number of copies ``n >= 1`` each ends up as ``[M]`` (clamped to ``n_max``).
        n_max: Largest ``n`` (gsplat's table size).

    Returns:
        New opacities ``[M]`` and scales ``[M, 3]``.
    """
    # float64: the alternating binomial sum cancels badly in float32 for large n and opacities near 1.
    dtype = opacities.dtype
    o = opacities.double()
    n = copies.clamp(1, n_max).double()
    new_op = 1.0 - torch.pow(1.0 - o, 1.0 / n)
    i = torch.arange(1, n_max + 1, device=o.device, dtype=o.dtype)  # [I]
    k = torch.arange(n_max, device=o.device, dtype=o.dtype)  # [K]
    binom = torch.exp(torch.lgamma(i[:, None]) - torch.lgamma(k[None] + 1) - torch.lgamma(i[:, None] - k[None]))
    binom = torch.where(k[None] < i[:, None], binom, torch.zeros_like(binom))  # C(i-1, k), zero for k >= i
    sign = torch.where(k % 2 == 0, 1.0, -1.0).to(o.dtype)
    terms = binom * sign / torch.sqrt(k + 1)  # [I, K]
    powers = new_op[:, None] ** (k[None] + 1)  # [M, K]
    inner = powers @ terms.T  # [M, I]: sum over k for each i
    keep = i[None] <= n[:, None]
    denom = torch.where(keep, inner, torch.zeros_like(inner)).sum(-1)
    return new_op.to(dtype), scales * (o / denom).to(dtype)[:, None]


def _sample(weights: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    return torch.multinomial(weights, count, replacement=True, generator=gen)


@torch.no_grad()
def relocate_dead(
    params: dict[str, torch.Tensor],
    min_opacity: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """Move every Gaussian with opacity <= ``min_opacity`` onto a live one sampled by opacity, and split the target.

    Args:
        params: Raw parameters (see :class:`gode.gaussians.Gaussians`), updated in place.
        min_opacity: Death threshold (3DGS-MCMC uses 0.005).
        gen: Generator for the sampling (seeded per step so that a resumed run matches).

    Returns:
        Indices of the Gaussians whose parameters changed (dead and their sources), for resetting optimiser state.
    """
    opac = torch.sigmoid(params["opacity_logits"])
    dead = (opac <= min_opacity).nonzero().flatten()
    alive = (opac > min_opacity).nonzero().flatten()
    if len(dead) == 0 or len(alive) == 0:
        return dead
    src = alive[_sample(opac[alive].cpu(), len(dead), gen).to(alive.device)]
    copies = torch.bincount(src, minlength=len(opac))[src] + 1
    new_op, new_scales = relocation_update(opac[src], torch.exp(params["log_scales"][src]), copies)
    new_logit = torch.logit(new_op.clamp(min_opacity, 1 - 1e-6))
    new_log_scales = torch.log(new_scales)
    params["opacity_logits"][src] = new_logit
    params["log_scales"][src] = new_log_scales
    for value in params.values():
        value[dead] = value[src]
    return torch.cat([dead, src.unique()])


@torch.no_grad()
def add_position_noise(params: dict[str, torch.Tensor], scale: float, gen: torch.Generator) -> None:
    """SGLD exploration: move centres by covariance-shaped noise, strongly only for near-transparent Gaussians.

    Args:
        params: Raw parameters, ``means`` updated in place.
        scale: ``noise_lr * current means learning rate``.
        gen: Generator of the noise.
    """
    opac = torch.sigmoid(params["opacity_logits"])
    covars = _gsplat.covariances(
        torch.nn.functional.normalize(params["quats"], dim=-1), torch.exp(params["log_scales"])
    )
    gate = torch.sigmoid(100.0 * ((1.0 - opac) - 0.995))  # ~1 when opacity < 0.005, ~0 otherwise
    noise = torch.randn(params["means"].shape, generator=gen).to(params["means"]) * gate[:, None] * scale
    params["means"].add_(torch.einsum("nij,nj->ni", covars, noise))


def regularisers(params: dict[str, torch.Tensor], opacity_reg: float, scale_reg: float) -> torch.Tensor:
    """3DGS-MCMC's L1 pressure on opacities and scales (drives unused Gaussians to death, hence relocation)."""
    return (
        opacity_reg * torch.sigmoid(params["opacity_logits"]).mean()
        + scale_reg * torch.exp(params["log_scales"]).mean()
    )


def means_lr(step: int, lr_init: float, lr_final: float, max_steps: int) -> float:
    """Exponential decay of the centres' learning rate from ``lr_init`` to ``lr_final`` over ``max_steps``."""
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return math.exp((1 - t) * math.log(lr_init) + t * math.log(lr_final))
