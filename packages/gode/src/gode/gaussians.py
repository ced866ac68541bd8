"""The 3DGS scene model: a fixed-size set of Gaussians stored as raw (pre-activation) parameters."""

from __future__ import annotations

import math

import torch
from torch import nn

SH_C0 = 0.28209479177387814  # Y_0^0; colour = SH_C0 * dc + 0.5


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    """DC SH coefficient that renders as ``rgb`` (any shape)."""
    return (rgb - 0.5) / SH_C0


def inverse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Logit of ``x`` in (0, 1)."""
    return torch.log(x / (1 - x))


class Gaussians(nn.Module):
    """``N`` anisotropic Gaussians with SH colour, in gsplat's parametrisation.

    Raw parameters (what the optimiser sees): ``means [N, 3]``, ``quats [N, 4]`` (wxyz, unnormalised),
    ``log_scales [N, 3]``, ``opacity_logits [N]``, ``sh0 [N, 1, 3]`` (DC) and ``shN [N, (d+1)^2 - 1, 3]`` (rest).
    Under 3DGS-MCMC the count is fixed at construction (``cap_max``); the default densification
    (:mod:`gode.densify`) resizes the parameters in place, and :class:`gode.lightning_module.GoDeModule` restores a
    checkpoint's count before loading it.

    Args:
        num: Number of Gaussians.
        sh_degree: Maximum SH degree.
        extent: Half-width of the cube the random initialisation fills.
        init_opacity: Initial opacity.
        init_scale: Initial scale as a multiple of the mean nearest-neighbour spacing of a uniform fill.
        seed: Seed of the random initialisation.
    """

    PARAMS = ("means", "quats", "log_scales", "opacity_logits", "sh0", "shN")

    def __init__(
        self,
        num: int,
        sh_degree: int = 3,
        extent: float = 1.0,
        init_opacity: float = 0.5,
        init_scale: float = 1.0,
        seed: int = 0,
    ):
        super().__init__()
        self.sh_degree = sh_degree
        gen = torch.Generator().manual_seed(seed)
        means = (torch.rand(num, 3, generator=gen) * 2 - 1) * extent
        spacing = 2 * extent / max(num, 1) ** (1 / 3)
        self.means = nn.Parameter(means)
        self.quats = nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(num, 1))
        self.log_scales = nn.Parameter(torch.full((num, 3), math.log(init_scale * spacing)))
        self.opacity_logits = nn.Parameter(torch.full((num,), float(inverse_sigmoid(torch.tensor(init_opacity)))))
        self.sh0 = nn.Parameter(rgb_to_sh(torch.rand(num, 1, 3, generator=gen)))
        self.shN = nn.Parameter(torch.zeros(num, (sh_degree + 1) ** 2 - 1, 3))

    def __len__(self) -> int:
        return self.means.shape[0]

    @torch.no_grad()
    def init_from_points(self, points: torch.Tensor, colors: torch.Tensor | None, seed: int = 0) -> None:
        """Re-initialise centres (and DC colour) by sampling ``points [M, 3]`` (``colors [M, 3]`` in [0, 1])."""
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randint(len(points), (len(self),), generator=gen)
        self.means.copy_(points[idx].to(self.means))
        if colors is not None:
            self.sh0.copy_(rgb_to_sh(colors[idx].to(self.sh0))[:, None])
        # Scale from the spread of the cloud: the mean spacing of N points filling its bounding box.
        span = (points.max(0).values - points.min(0).values).clamp_min(1e-6)
        spacing = float(span.prod() ** (1 / 3)) / len(self) ** (1 / 3)
        self.log_scales.fill_(math.log(spacing))

    def activated(self) -> dict[str, torch.Tensor]:
        """Render-ready tensors (see :func:`activate`)."""
        return activate(self.raw())

    def raw(self) -> dict[str, torch.Tensor]:
        """The raw parameters by name."""
        return {name: getattr(self, name) for name in self.PARAMS}


def activate(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Raw parameters -> ``means``, ``quats`` (normalised), ``scales``, ``opacities``, ``coeffs [N, K, 3]``."""
    return {
        "means": raw["means"],
        "quats": torch.nn.functional.normalize(raw["quats"], dim=-1),
        "scales": torch.exp(raw["log_scales"]),
        "opacities": torch.sigmoid(raw["opacity_logits"]),
        "coeffs": torch.cat([raw["sh0"], raw["shN"]], 1),
    }
