"""A CPU-scale UnlearnCanvas: procedurally drawn objects in colour/texture styles, with exact labels.

Six shapes x four styles at 16 x 16 RGB. Every image is a pure function of ``(seed, index)``: shape position, size
and rotation are jittered, edges are anti-aliased by rendering at 4x and averaging. Values are in [0, 1].
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

OBJECTS = ("circle", "square", "triangle", "cross", "ring", "star")
#: style name -> (main colour, second colour, texture)
STYLES = {
    "ember": ((0.90, 0.15, 0.10), (0.90, 0.15, 0.10), "flat"),
    "ocean": ((0.10, 0.30, 0.95), (0.70, 0.85, 1.00), "stripes"),
    "moss": ((0.15, 0.70, 0.20), (0.02, 0.25, 0.05), "dots"),
    "amber": ((1.00, 0.65, 0.00), (0.45, 0.20, 0.00), "checker"),
}
STYLE_NAMES = tuple(STYLES)
BACKGROUND = 0.4
SUPERSAMPLE = 4


def _shape_mask(obj: torch.Tensor, u: torch.Tensor, v: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Inside-masks ``[B, H, W]`` of shapes ``obj`` ``[B]`` in rotated, centred coordinates ``u, v`` ``[B, H, W]``."""
    r = (u**2 + v**2).sqrt()
    theta = torch.atan2(v, u)
    big = radius[:, None, None]
    masks = torch.stack(
        [
            r < big,  # circle
            torch.maximum(u.abs(), v.abs()) < 0.8 * big,  # square
            torch.stack([v * math.cos(a) + u * math.sin(a) for a in (0.0, 2.094, 4.189)]).amax(0) < 0.5 * big,
            ((u.abs() < 0.3 * big) & (v.abs() < big)) | ((v.abs() < 0.3 * big) & (u.abs() < big)),  # cross
            (r < big) & (r > 0.55 * big),  # ring
            r < big * (0.62 + 0.38 * torch.cos(5 * theta)),  # star
        ]
    )  # [6, B, H, W]
    return masks.gather(0, obj.view(1, -1, 1, 1).expand(1, *u.shape)).squeeze(0)


def _texture(kind: str, x: torch.Tensor, y: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Pattern masks ``[B, H, W]`` in {0, 1} (1 = second colour) on pixel grids ``x, y`` (units of output pixels)."""
    p = phase[:, None, None]
    if kind == "flat":
        return torch.zeros_like(x)
    if kind == "stripes":
        return (torch.sin((x + y + p) * math.pi / 2.0) > 0).float()
    if kind == "dots":
        return ((torch.sin((x + p) * math.pi / 2.0) > 0.3) & (torch.sin((y + p) * math.pi / 2.0) > 0.3)).float()
    return ((torch.floor((x + p) / 2.0) + torch.floor((y + p) / 2.0)) % 2).float()  # checker


def render(
    objects: torch.Tensor, styles: torch.Tensor, size: int = 16, seed: int = 0, index: torch.Tensor | None = None
) -> torch.Tensor:
    """Draw images of ``objects[i]`` in ``styles[i]``.

    Args:
        objects: ``[B]`` object ids (indices into :data:`OBJECTS`).
        styles: ``[B]`` style ids (indices into :data:`STYLE_NAMES`).
        size: Output side in pixels.
        seed: Seed of the jitter.
        index: ``[B]`` item indices; the jitter of item ``i`` depends only on ``(seed, index[i])``.

    Returns:
        Images ``[B, 3, size, size]`` in [0, 1].
    """
    b = objects.shape[0]
    index = torch.arange(b) if index is None else index
    gen_params = torch.stack(
        [torch.rand(5, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(i))) for i in index]
    )  # [B, 5]: cx, cy, radius, angle, texture phase
    cx, cy = (gen_params[:, 0] - 0.5) * 0.3, (gen_params[:, 1] - 0.5) * 0.3
    radius = 0.55 + 0.25 * gen_params[:, 2]
    angle = gen_params[:, 3] * 2 * math.pi
    phase = gen_params[:, 4] * 4
    n = size * SUPERSAMPLE
    lin = (torch.arange(n) + 0.5) / n * 2 - 1
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    dx, dy = xx[None] - cx[:, None, None], yy[None] - cy[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    inside = _shape_mask(objects, u, v, radius).float()  # [B, n, n]
    px, py = (xx + 1) / 2 * size, (yy + 1) / 2 * size
    image = torch.full((b, 3, n, n), BACKGROUND)
    for s, name in enumerate(STYLE_NAMES):
        rows = (styles == s).nonzero().flatten()
        if len(rows) == 0:
            continue
        c1, c2, kind = STYLES[name]
        pattern = _texture(kind, px[None].expand(len(rows), n, n), py[None].expand(len(rows), n, n), phase[rows])
        colour = (
            torch.tensor(c1)[None, :, None, None] * (1 - pattern[:, None])
            + torch.tensor(c2)[None, :, None, None] * pattern[:, None]
        )
        m = inside[rows, None]
        image[rows] = colour * m + BACKGROUND * (1 - m)
    return F.avg_pool2d(image, SUPERSAMPLE)


def grid_labels(per_combo: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Object and style ids for ``per_combo`` images of every (object, style) pair: two ``[n_obj * n_style * k]``."""
    obj = torch.arange(len(OBJECTS)).repeat_interleave(len(STYLE_NAMES) * per_combo)
    sty = torch.arange(len(STYLE_NAMES)).repeat_interleave(per_combo).repeat(len(OBJECTS))
    return obj, sty
