"""3DGS's default adaptive density control (Kerbl et al., 2023) in plain, vectorised torch.

The alternative to 3DGS-MCMC (:mod:`gode.mcmc`): the number of Gaussians changes during training.

- **Statistics**: after every backward pass, each Gaussian visible in the view (radius > 0) adds the norm of its
  view-space positional gradient, taken in NDC units (pixel gradient times ``(W/2, H/2)``), to a running sum and 1
  to its visibility count. The mean over the views that saw it is compared with ``grad_threshold`` (0.0002).
- **Clone** under-reconstructed small Gaussians (largest scale <= ``dense_fraction * scene_scale``): an exact copy.
- **Split** over-reconstructed large ones: two children drawn from the parent's Gaussian ``N(mu, R S S^T R^T)``,
  each with the parent's scale divided by 1.6 (the rest copied); the parent is removed.
- **Prune** Gaussians with opacity < ``prune_opacity``, and, once the first opacity reset has passed, those whose
  largest scale exceeds ``prune_scale * scene_scale``.
- **Opacity reset** every ``reset_every`` steps: opacities clamped to at most ``reset_value``.

Every change of the Gaussian set goes through :func:`update_rows`, which rewrites the parameters in place (same
``nn.Parameter`` objects, so the optimiser keeps tracking them) and gives the Adam moments the same treatment:
kept rows keep their moments, new rows start at zero, removed rows are dropped.
"""

from __future__ import annotations

import torch
from torch import nn

#: 3DGS divides the scale of both children of a split by ``0.8 * 2``.
SPLIT_SCALE_DIVISOR = 1.6


@torch.no_grad()
def accumulate_grad2d(
    grad2d: torch.Tensor,
    count: torch.Tensor,
    means2d_grad: torch.Tensor,
    visible: torch.Tensor,
    width: int,
    height: int,
) -> None:
    """Add one view's view-space gradient norms to the running statistics (in place).

    Args:
        grad2d: Running sum of gradient norms ``[N]``.
        count: Number of views each Gaussian was visible in ``[N]``.
        means2d_grad: ``d loss / d means2d`` in pixels ``[N, 2]``.
        visible: Which Gaussians the view saw ``[N]`` (bool).
        width: Image width (pixels -> NDC: ``x_ndc = 2 x / W - 1``, so ``d/dx_ndc = W/2 d/dx``).
        height: Image height.
    """
    scale = means2d_grad.new_tensor([width / 2.0, height / 2.0])
    norms = (means2d_grad * scale).norm(dim=-1)
    grad2d.add_(torch.where(visible, norms, torch.zeros_like(norms)).to(grad2d))
    count.add_(visible.to(count.dtype))


def average_grad2d(grad2d: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mean view-space gradient norm per Gaussian over the views that saw it (0 if none did) ``[N]``."""
    return grad2d / count.clamp_min(1).to(grad2d)


@torch.no_grad()
def update_rows(
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer | None,
    keep: torch.Tensor,
    new: dict[str, torch.Tensor] | None = None,
) -> None:
    """Replace every parameter by ``cat(param[keep], new[name])``, and the optimiser state alike.

    Args:
        params: Raw parameters by name (``[N, ...]`` each); their ``.data`` is replaced, the objects stay, so the
            optimiser's parameter groups need no change.
        optimizer: Optimiser holding them: per-row state (Adam's ``exp_avg``/``exp_avg_sq``, shaped like the
            parameter) follows ``keep`` and is zero for new rows; scalar state (``step``) is untouched. None:
            parameters only.
        keep: Indices of the rows to keep, in their new order ``[K]`` (long).
        new: Rows to append by name, ``[M, ...]`` each (every name, or None for none).
    """
    for name, param in params.items():
        old_shape = param.shape
        rows = new[name].to(param) if new is not None else param.data[:0]
        param.data = torch.cat([param.data[keep], rows])
        param.grad = None  # a stale gradient of the old shape must not reach the next step
        state = optimizer.state.get(param, {}) if optimizer is not None else {}
        for key, value in list(state.items()):
            if torch.is_tensor(value) and value.shape == old_shape:
                state[key] = torch.cat([value[keep], value.new_zeros((len(rows), *old_shape[1:]))])


def clone(params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer | None, selected: torch.Tensor) -> None:
    """Append an exact copy of every ``selected`` Gaussian (bool ``[N]``) at the end; its Adam moments are zero."""
    idx = selected.nonzero().flatten()
    keep = torch.arange(len(selected), device=selected.device)
    update_rows(params, optimizer, keep, {k: v.data[idx] for k, v in params.items()})


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[M, 3, 3]`` of quaternions ``[M, 4]`` (wxyz, normalised here)."""
    w, x, y, z = nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        -1,
    ).reshape(*quats.shape[:-1], 3, 3)


def split_samples(
    means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, samples: int, gen: torch.Generator | None
) -> torch.Tensor:
    """Draw ``samples`` positions from each Gaussian ``N(mu, R diag(s^2) R^T)``.

    Args:
        means: Centres ``[M, 3]``.
        quats: Rotations ``[M, 4]`` (wxyz, need not be normalised).
        scales: Activated scales ``[M, 3]``.
        samples: Draws per Gaussian.
        gen: Generator of the standard normal draws (drawn on CPU, so a seed gives the same split on any device).

    Returns:
        Positions ``[samples, M, 3]``.
    """
    z = torch.randn((samples, *means.shape), generator=gen).to(means)  # [S, M, 3]
    # R (s * z) has covariance R diag(s^2) R^T, the Gaussian's own.
    return means + torch.einsum("mij,smj->smi", quat_to_rotmat(quats), z * scales)


def split(
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer | None,
    selected: torch.Tensor,
    gen: torch.Generator | None,
    samples: int = 2,
) -> None:
    """Replace every ``selected`` Gaussian (bool ``[N]``) by ``samples`` children drawn inside it.

    Children: centres sampled from the parent's Gaussian, log-scale ``log(s / 1.6)``, the other parameters copied;
    they are appended (``samples`` blocks in parent order) after the unselected Gaussians, with zero Adam moments.
    """
    idx = selected.nonzero().flatten()
    raw = {k: v.data[idx] for k, v in params.items()}
    means = split_samples(raw["means"], raw["quats"], torch.exp(raw["log_scales"]), samples, gen)
    new = {k: v.repeat(samples, *([1] * (v.dim() - 1))) for k, v in raw.items()}
    new["means"] = means.reshape(-1, 3)
    new["log_scales"] = new["log_scales"] - torch.log(torch.tensor(SPLIT_SCALE_DIVISOR))
    update_rows(params, optimizer, (~selected).nonzero().flatten(), new)


def prune(params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer | None, selected: torch.Tensor) -> None:
    """Remove the ``selected`` Gaussians (bool ``[N]``) and their optimiser state."""
    update_rows(params, optimizer, (~selected).nonzero().flatten())


@torch.no_grad()
def reset_opacity(params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer | None, value: float) -> None:
    """Clamp every opacity to at most ``value`` and zero the opacities' Adam moments."""
    logits = params["opacity_logits"]
    logits.data.clamp_(max=float(torch.logit(torch.tensor(value))))
    state = optimizer.state.get(logits, {}) if optimizer is not None else {}
    for value_ in state.values():
        if torch.is_tensor(value_) and value_.shape == logits.shape:
            value_.zero_()


class DefaultDensification:
    """3DGS's adaptive density control as a strategy object (no Lightning inside; see the module docstring).

    The caller owns the statistics (``grad2d``, ``count``: ``[N]`` tensors, kept in the checkpoint) and calls
    :meth:`update` after each backward pass and :meth:`refine` after each optimiser step.

    Args:
        start: Densify from this step (3DGS's ``densify_from_iter``, 500).
        stop: Densify until this step, exclusive (``densify_until_iter``, 15000); statistics stop too.
        every: Steps between densifications (``densification_interval``, 100).
        grad_threshold: Mean NDC view-space gradient norm above which a Gaussian is grown (0.0002).
        dense_fraction: Clone if the largest scale is at most this times ``scene_scale``, else split (0.01).
        prune_opacity: Opacity under which a Gaussian is removed (0.005).
        prune_scale: Largest scale, times ``scene_scale``, above which a Gaussian is removed once the first
            opacity reset has passed (0.1).
        reset_every: Steps between opacity resets (3000; 0: never).
        reset_value: Opacity ceiling of a reset (0.01).
    """

    def __init__(
        self,
        start: int = 500,
        stop: int = 15000,
        every: int = 100,
        grad_threshold: float = 0.0002,
        dense_fraction: float = 0.01,
        prune_opacity: float = 0.005,
        prune_scale: float = 0.1,
        reset_every: int = 3000,
        reset_value: float = 0.01,
    ):
        self.start, self.stop, self.every = start, stop, every
        self.grad_threshold = grad_threshold
        self.dense_fraction = dense_fraction
        self.prune_opacity = prune_opacity
        self.prune_scale = prune_scale
        self.reset_every = reset_every
        self.reset_value = reset_value

    def collecting(self, step: int) -> bool:
        """Whether the backward pass of (0-based) step ``step`` feeds the statistics."""
        return step < self.stop

    def update(
        self, stats: dict[str, torch.Tensor], means2d: torch.Tensor, radii: torch.Tensor, width: int, height: int
    ) -> None:
        """Accumulate the gradient retained on ``means2d`` (``[N, 2]`` or ``[1, N, 2]``) for the visible ones."""
        n = stats["grad2d"].shape[0]
        visible = (radii.reshape(n, -1) > 0).all(-1)
        accumulate_grad2d(stats["grad2d"], stats["count"], means2d.grad.reshape(n, 2), visible, width, height)

    @torch.no_grad()
    def refine(
        self,
        params: dict[str, nn.Parameter],
        optimizer: torch.optim.Optimizer | None,
        stats: dict[str, torch.Tensor],
        step: int,
        scene_scale: float,
        gen: torch.Generator | None,
    ) -> dict[str, int]:
        """Grow, prune and reset after optimiser step ``step`` (1-based: ``step`` steps are done).

        Returns:
            Whether a densification ran, how many Gaussians it cloned, split and pruned, and whether the opacities
            were reset (all 0 when nothing was due). After a densification the caller must restart ``stats`` (and
            anything else per Gaussian) at zero with the new count.
        """
        done = {"densified": 0, "cloned": 0, "split": 0, "pruned": 0, "reset": 0}
        if step >= self.stop:
            return done
        if step > self.start and step % self.every == 0:
            grads = average_grad2d(stats["grad2d"], stats["count"])
            high = grads >= self.grad_threshold
            small = torch.exp(params["log_scales"]).max(-1).values <= self.dense_fraction * scene_scale
            to_clone, to_split = high & small, high & ~small
            clone(params, optimizer, to_clone)
            # Clones are appended last and never split in the same round.
            to_split = torch.cat([to_split, to_split.new_zeros(int(to_clone.sum()))])
            split(params, optimizer, to_split, gen)
            opac = torch.sigmoid(params["opacity_logits"])
            dead = opac < self.prune_opacity
            if self.reset_every > 0 and step > self.reset_every:
                dead |= torch.exp(params["log_scales"]).max(-1).values > self.prune_scale * scene_scale
            prune(params, optimizer, dead)
            done.update(densified=1, cloned=int(to_clone.sum()), split=int(to_split.sum()), pruned=int(dead.sum()))
        if self.reset_every > 0 and step % self.reset_every == 0:
            reset_opacity(params, optimizer, self.reset_value)
            done["reset"] = 1
        return done
