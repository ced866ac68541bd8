"""Gaussian diffusion with a cosine schedule and an x0-predicting denoiser; the two ways to reconstruct.

``denoiser(x_t, t, cond) -> x0_hat`` is any callable: images ``[B, C, H, W]``, integer timesteps ``[B]`` in
``[0, T)`` and an optional condition ``[B, D]``. Timestep ``t`` here is the index of diffusers' schedules
(``alphas_cumprod[t]`` is the signal level after ``t + 1`` noising steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
NoiseFn = Callable[[torch.Tensor], torch.Tensor]


def cosine_alphas_cumprod(timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cumulative signal levels ``ᾱ_t`` of the cosine schedule (Nichol & Dhariwal 2021), ``[T]`` float64.

    ``ᾱ(τ) = cos²((τ/T + s)/(1 + s) · π/2)``; the per-step ``β_t = 1 - ᾱ(t+1)/ᾱ(t)`` is clipped at ``max_beta``
    so the last steps stay finite, and ``ᾱ_t = ∏(1 - β)``.
    """
    tau = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((tau + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, dim=0)


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values[t]`` broadcast to ``like``'s shape (``[B, 1, 1, 1]``) in its dtype and device."""
    return values.to(like.device)[t].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Noise clean images ``x0 [B, C, H, W]`` to steps ``t [B]``: ``√ᾱ_t x0 + √(1-ᾱ_t) ε``."""
    a = _at(alphas_cumprod, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def noise_from_x0(x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The noise ``ε`` implied by ``x_t`` and a clean estimate ``x0`` (inverse of :func:`q_sample`)."""
    a = _at(alphas_cumprod, t, x_t)
    return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def posterior_step(
    x_t: torch.Tensor,
    t: int,
    t_prev: int,
    x0_hat: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """One ancestral step ``x_t -> x_{t_prev}`` from ``q(x_{t_prev} | x_t, x0_hat)`` (strided when ``t - t_prev > 1``).

    Args:
        x_t: Current images ``[B, C, H, W]``.
        t: Current step.
        t_prev: Target step, ``-1`` for the clean image (returns ``x0_hat``).
        x0_hat: Predicted clean images.
        alphas_cumprod: ``[T]`` schedule.
        noise: Noise for the posterior variance (``None``: the posterior mean).

    Returns:
        ``x_{t_prev}``.
    """
    if t_prev < 0:
        return x0_hat
    a_t, a_prev = float(alphas_cumprod[t]), float(alphas_cumprod[t_prev])
    alpha = a_t / a_prev  # signal kept between t_prev and t
    beta = 1 - alpha
    mean = (math.sqrt(a_prev) * beta / (1 - a_t)) * x0_hat + (math.sqrt(alpha) * (1 - a_prev) / (1 - a_t)) * x_t
    if noise is None:
        return mean
    var = beta * (1 - a_prev) / (1 - a_t)
    return mean + math.sqrt(max(var, 1e-20)) * noise


@torch.no_grad()
def reconstruct_multi_t(
    denoiser: Denoiser,
    x: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    t_values: Sequence[int],
    noise_fn: NoiseFn,
    cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """The paper's inference: noise ``x`` to each ``t``, predict ``x0`` in one step, average the predictions.

    Args:
        denoiser: ``(x_t, t, cond) -> x0_hat``.
        x: Images ``[B, C, H, W]``.
        alphas_cumprod: ``[T]`` schedule.
        t_values: Noise levels, e.g. ``(250, 500, 750)``.
        noise_fn: Draws noise shaped like its argument (Gaussian or simplex).
        cond: Condition ``[B, D]`` (computed once from the clean input).

    Returns:
        Reconstruction ``[B, C, H, W]``.
    """
    total = torch.zeros_like(x)
    for t_value in t_values:
        t = torch.full((x.shape[0],), int(t_value), dtype=torch.long, device=x.device)
        total += denoiser(q_sample(x, t, noise_fn(x), alphas_cumprod), t, cond)
    return total / len(t_values)


@torch.no_grad()
def reconstruct_chain(
    denoiser: Denoiser,
    x: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    t_start: int,
    steps: int,
    noise_fn: NoiseFn,
    cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """AnoDDPM's partial reverse chain: noise to ``t_start`` and denoise back in ``steps`` ancestral steps.

    ``steps = t_start + 1`` is the full chain; fewer steps stride it evenly (same endpoints, fewer network calls).
    """
    ts = torch.linspace(t_start, 0, steps).round().long().unique_consecutive().tolist()
    t0 = torch.full((x.shape[0],), ts[0], dtype=torch.long, device=x.device)
    x_t = q_sample(x, t0, noise_fn(x), alphas_cumprod)
    for k, t_value in enumerate(ts):
        t = torch.full((x.shape[0],), t_value, dtype=torch.long, device=x.device)
        x0_hat = denoiser(x_t, t, cond)
        t_prev = ts[k + 1] if k + 1 < len(ts) else -1
        x_t = posterior_step(x_t, t_value, t_prev, x0_hat, alphas_cumprod, noise_fn(x) if t_prev >= 0 else None)
    return x_t
