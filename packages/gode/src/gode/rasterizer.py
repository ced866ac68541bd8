"""Differentiable 3D Gaussian Splatting rasterizer: gsplat's CUDA kernels on GPU, a tiled pure-torch path on CPU.

Both follow gsplat's ``rasterization`` conventions: OpenCV camera (world-to-camera ``viewmat``, intrinsics ``K``),
pixel centres at ``(x + 0.5, y + 0.5)``, per-pixel front-to-back compositing of the Gaussians that touch the pixel's
16x16 tile, ``alpha = min(0.999, o * exp(-sigma))`` with contributions under 1/255 skipped, and early termination once
the transmittance would fall to 1e-4. Depth is the alpha-weighted camera z (gsplat's ``"D"`` channel).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from gode import _gsplat

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4


class Render(NamedTuple):
    """One rendered view: ``rgb [H, W, 3]``, ``alpha [H, W, 1]``, ``depth [H, W, 1]``.

    ``means2d`` (pixel-space centres, ``[N, 2]`` on CPU, ``[1, N, 2]`` from gsplat) is the very tensor the image was
    composited from, so ``means2d.retain_grad()`` before ``backward`` yields the view-space positional gradient that
    the default densification accumulates; ``radii`` (``[N, 2]`` / ``[1, N, 2]``, 0 = culled) says who was visible.
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    means2d: torch.Tensor | None = None
    radii: torch.Tensor | None = None


def tile_overlaps(
    means2d: torch.Tensor, radii: torch.Tensor, width: int, height: int, tile_size: int
) -> tuple[torch.Tensor, int, int]:
    """Which Gaussians touch which tile, with gsplat's bounding-box rule.

    Args:
        means2d: Projected centres ``[N, 2]``.
        radii: Integer pixel radii ``[N, 2]`` (0 = culled).
        width: Image width.
        height: Image height.
        tile_size: Tile edge in pixels.

    Returns:
        Boolean ``[tiles_y * tiles_x, N]`` overlap mask (row-major tiles) and the tile grid ``tiles_x, tiles_y``.
    """
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    r = radii.to(means2d.dtype)
    lo = torch.floor((means2d - r) / tile_size)
    hi = torch.ceil((means2d + r) / tile_size)
    lo_x, hi_x = lo[:, 0].clamp(0, tiles_x), hi[:, 0].clamp(0, tiles_x)
    lo_y, hi_y = lo[:, 1].clamp(0, tiles_y), hi[:, 1].clamp(0, tiles_y)
    tx = torch.arange(tiles_x, device=means2d.device, dtype=means2d.dtype)
    ty = torch.arange(tiles_y, device=means2d.device, dtype=means2d.dtype)
    in_x = (tx[:, None] >= lo_x) & (tx[:, None] < hi_x)  # [tiles_x, N]
    in_y = (ty[:, None] >= lo_y) & (ty[:, None] < hi_y)  # [tiles_y, N]
    visible = (radii > 0).all(-1)
    mask = (in_y[:, None, :] & in_x[None, :, :] & visible).reshape(tiles_y * tiles_x, -1)
    return mask, tiles_x, tiles_y


def composite(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    features: torch.Tensor,
    depths: torch.Tensor,
    radii: torch.Tensor,
    width: int,
    height: int,
    tile_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiled, depth-sorted front-to-back alpha compositing of projected Gaussians (pure torch, differentiable).

    Each tile gathers the Gaussians overlapping it in depth order, padded to the busiest tile, and composites all
    its pixels at once: the work is ``tiles x pixels_per_tile x max_overlaps`` instead of ``pixels x N``.

    Args:
        means2d: Pixel-space centres ``[N, 2]``.
        conics: Inverse 2D covariances ``[N, 3]`` as ``(a, b, c)``.
        opacities: Opacities in (0, 1) ``[N]``.
        features: Per-Gaussian features to blend ``[N, D]`` (colour, depth ...).
        depths: Camera-space depths ``[N]`` (the sort key).
        radii: Integer radii ``[N, 2]`` (0 = culled).
        width: Image width.
        height: Image height.
        tile_size: Tile edge in pixels.

    Returns:
        Blended features ``[H, W, D]`` and accumulated alpha ``[H, W, 1]``.
    """
    device, dtype = means2d.device, means2d.dtype
    dim = features.shape[-1]
    order = torch.argsort(depths, stable=True)
    means2d, conics, opacities, features, radii = (t[order] for t in (means2d, conics, opacities, features, radii))
    mask, tiles_x, tiles_y = tile_overlaps(means2d, radii, width, height, tile_size)
    counts = mask.sum(1)
    k = int(counts.max()) if counts.numel() else 0
    if k == 0:
        return torch.zeros(height, width, dim, device=device, dtype=dtype), torch.zeros(
            height, width, 1, device=device, dtype=dtype
        )
    # Stable sort of the negated mask lists each tile's Gaussians first, still in depth order.
    idx = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :k]  # [T, K]
    valid = torch.arange(k, device=device) < counts[:, None]  # [T, K]

    # Pixel centres of every tile, row-major inside the tile: [T, P, 2].
    p = torch.arange(tile_size, device=device, dtype=dtype)
    py, px = torch.meshgrid(p, p, indexing="ij")
    local = torch.stack([px.flatten(), py.flatten()], -1)
    ty, tx = torch.meshgrid(
        torch.arange(tiles_y, device=device, dtype=dtype),
        torch.arange(tiles_x, device=device, dtype=dtype),
        indexing="ij",
    )
    origin = torch.stack([tx.flatten(), ty.flatten()], -1) * tile_size
    pix = origin[:, None, :] + local[None] + 0.5  # [T, P, 2]

    m = means2d[idx]  # [T, K, 2]
    dx = pix[:, :, None, 0] - m[:, None, :, 0]  # [T, P, K]
    dy = pix[:, :, None, 1] - m[:, None, :, 1]
    con = conics[idx][:, None]  # [T, 1, K, 3]
    sigma = 0.5 * (con[..., 0] * dx * dx + con[..., 2] * dy * dy) + con[..., 1] * dx * dy
    alpha = torch.clamp_max(opacities[idx][:, None] * torch.exp(-sigma), ALPHA_MAX)  # [T, P, K]
    alpha = torch.where(valid[:, None] & (sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
    # Transmittance in log space: cumsum's backward is far cheaper than cumprod's, and alpha <= 0.999 keeps it finite.
    log_trans = torch.cumsum(torch.log1p(-alpha), dim=-1)
    trans = torch.exp(log_trans)
    trans_before = torch.exp(log_trans - torch.log1p(-alpha))
    # gsplat stops a pixel before the Gaussian that would push T to 1e-4; T only falls, so all later ones drop too.
    weights = torch.where(trans > T_MIN, alpha * trans_before, torch.zeros_like(alpha))  # [T, P, K]

    blended = torch.einsum("tpk,tkd->tpd", weights, features[idx])  # [T, P, D]
    acc = weights.sum(-1, keepdim=True)  # [T, P, 1]

    def untile(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(tiles_y, tiles_x, tile_size, tile_size, -1).permute(0, 2, 1, 3, 4)
        return x.reshape(tiles_y * tile_size, tiles_x * tile_size, -1)[:height, :width]

    return untile(blended), untile(acc)


def rasterize(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    coeffs: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    sh_degree: int | None = None,
    background: torch.Tensor | None = None,
    tile_size: int = 16,
    use_cuda: bool | None = None,
) -> Render:
    """Render activated Gaussians into one camera.

    Args:
        means: Centres ``[N, 3]``.
        quats: Rotations ``[N, 4]`` (wxyz, need not be normalised).
        scales: Positive scales ``[N, 3]``.
        opacities: Opacities in (0, 1) ``[N]``.
        coeffs: SH coefficients ``[N, (d+1)^2, 3]``.
        viewmat: World-to-camera ``[4, 4]`` (OpenCV).
        K: Intrinsics ``[3, 3]``.
        width: Image width.
        height: Image height.
        sh_degree: SH degree to evaluate (default: all of ``coeffs``).
        background: RGB ``[3]`` behind the Gaussians (default black).
        tile_size: Tile edge of the CPU path.
        use_cuda: Force gsplat's CUDA kernels on/off; default: on for CUDA tensors when the kernels are allowed.

    Returns:
        :class:`Render` with ``rgb [H, W, 3]``, ``alpha [H, W, 1]``, ``depth [H, W, 1]``, and the projected
        ``means2d`` and ``radii`` (see :class:`Render`).
    """
    if sh_degree is None:
        sh_degree = round(coeffs.shape[1] ** 0.5) - 1
    if use_cuda is None:
        from reprokit.devices import cuda_kernels_available

        use_cuda = means.is_cuda and cuda_kernels_available()
    if use_cuda:
        return Render(
            *_gsplat.rasterize_cuda(
                means, quats, scales, opacities, coeffs, viewmat, K, width, height, sh_degree, background
            )
        )
    covars = _gsplat.covariances(quats, scales)
    radii, means2d, depths, conics = _gsplat.project(means, covars, viewmat, K, width, height)
    campos = -viewmat[:3, :3].T @ viewmat[:3, 3]
    colors = _gsplat.sh_to_rgb(sh_degree, means - campos, coeffs)
    feats, alpha = composite(
        means2d, conics, opacities, torch.cat([colors, depths[:, None]], -1), depths, radii, width, height, tile_size
    )
    rgb, depth = feats[..., :3], feats[..., 3:]
    if background is not None:
        rgb = rgb + (1.0 - alpha) * background
    return Render(rgb, alpha, depth, means2d, radii)
