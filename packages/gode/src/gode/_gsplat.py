"""The one place that touches gsplat's private pure-torch helpers (a gsplat upgrade changes only this file).

``gsplat.cuda._torch_impl`` is CPU-safe: importing it and calling these functions never triggers gsplat's JIT CUDA
build. gsplat's public ``rasterization`` needs CUDA and is only called under
:func:`reprokit.devices.cuda_kernels_available` (see :func:`rasterize_cuda`).
"""

from __future__ import annotations

import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics

__all__ = ["covariances", "project", "rasterize_cuda", "sh_to_rgb"]


def covariances(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """World-space covariances ``R S S^T R^T`` ``[N, 3, 3]`` of quaternions ``[N, 4]`` (wxyz) and scales ``[N, 3]``."""
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False, triu=False)
    return covars


def project(
    means: torch.Tensor,
    covars: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pinhole EWA projection of 3D Gaussians into one camera, exactly as gsplat does it.

    Args:
        means: World-space centres ``[N, 3]``.
        covars: World-space covariances ``[N, 3, 3]``.
        viewmat: World-to-camera matrix ``[4, 4]`` (OpenCV: x right, y down, z forward).
        K: Intrinsics ``[3, 3]``.
        width: Image width in pixels.
        height: Image height in pixels.
        eps2d: Screen-space blur added to the 2D covariance (gsplat's default 0.3 px²).
        near_plane: Gaussians closer than this are culled.

    Returns:
        ``radii [N, 2]`` (int, 0 = culled), ``means2d [N, 2]`` (pixels), ``depths [N]`` (camera z) and
        ``conics [N, 3]`` (upper triangle ``a, b, c`` of the inverse 2D covariance).
    """
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        means, covars, viewmat[None], K[None], width, height, eps2d=eps2d, near_plane=near_plane
    )
    return radii[0], means2d[0], depths[0], conics[0]


def sh_to_rgb(sh_degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """View-dependent colour ``[N, 3]`` of SH ``coeffs [N, K, 3]`` along ``dirs [N, 3]``, with gsplat's +0.5 offset."""
    return torch.clamp_min(_spherical_harmonics(sh_degree, dirs, coeffs) + 0.5, 0.0)


def rasterize_cuda(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    coeffs: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    sh_degree: int,
    background: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render with gsplat's fused CUDA rasterizer (CUDA only).

    Returns:
        rgb ``[H, W, 3]``, alpha ``[H, W, 1]``, depth ``[H, W, 1]``, and gsplat's own ``means2d [1, N, 2]`` and
        ``radii [1, N, 2]`` (the tensors in the graph: a gradient retained on ``means2d`` is the view-space one).
    """
    from gsplat import rasterization

    out, alphas, info = rasterization(
        means,
        quats,
        scales,
        opacities,
        coeffs,
        viewmat[None],
        K[None],
        width,
        height,
        sh_degree=sh_degree,
        backgrounds=None if background is None else background[None],
        render_mode="RGB+D",
        packed=False,
    )
    return out[0, ..., :3], alphas[0], out[0, ..., 3:4], info["means2d"], info["radii"]
