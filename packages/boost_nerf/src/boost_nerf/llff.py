"""LLFF forward-facing scenes: the ``poses_bounds.npy`` reader, recentring/rescaling, holdout split and NDC rays.

Layout of one scene folder (as released with LLFF / NeRF, e.g. ``nerf_llff_data/fern``)::

    poses_bounds.npy   # [N, 17]: per image a 3x5 matrix (row-major) and the near/far depth bounds
    images/            # full-resolution photos (sorted file names follow the rows of poses_bounds.npy)
    images_4/, images_8/  # the same photos downsampled by 4 and 8 (optional: resized here when absent)

Each 3x5 matrix is ``[R | t | hwf]``: the camera-to-world rotation with columns [down, right, back], the camera
centre, and the full-resolution height, width and focal length. This module turns the columns into the OpenGL
convention of :mod:`reprokit.scenes` ([right, up, back]), rescales the scene so that the nearest bound sits at
``1 / bd_factor``, recentres the poses on their average, and maps rays to normalised device coordinates (NDC), where
the frustum from the near plane to infinity becomes the cube ``[-1, 1]^3``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

LLFF_HOW = (
    "download nerf_llff_data.zip (NeRF authors' Google Drive, linked from https://github.com/bmild/nerf) and point "
    "data_dir at one scene folder, e.g. data/nerf_llff_data/fern (poses_bounds.npy + images/ or images_<factor>/)"
)
#: Every ``LLFF_HOLDOUT``-th image (0, 8, 16, ...) is held out for testing, as in NeRF and DVGO.
LLFF_HOLDOUT = 8
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class LLFFScene:
    """A forward-facing scene after recentring and rescaling.

    Attributes:
        images: RGB ``[N, H, W, 3]`` float32 in [0, 1] (at the chosen downsampling factor).
        c2w: Camera-to-world ``[N, 4, 4]`` float32, OpenGL convention (x right, y up, camera looks along -z).
        bounds: Near/far depth bounds ``[N, 2]`` after rescaling.
        focal: Focal length in pixels at the chosen factor.
        names: Image file names.
    """

    images: torch.Tensor
    c2w: torch.Tensor
    bounds: torch.Tensor
    focal: float
    names: list[str]

    @property
    def height(self) -> int:
        """Image height."""
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        """Image width."""
        return int(self.images.shape[2])


def llff_to_opengl(poses: torch.Tensor) -> torch.Tensor:
    """Reorder LLFF rotation columns [down, right, back] to [right, up, back] (OpenGL).

    Args:
        poses: ``[N, 3, >=4]`` LLFF camera-to-world matrices (extra columns, e.g. hwf, pass through).

    Returns:
        Same shape: column 0 = old column 1 (right), column 1 = -old column 0 (up = -down), the rest unchanged.
    """
    return torch.cat([poses[:, :, 1:2], -poses[:, :, 0:1], poses[:, :, 2:]], 2)


def average_pose(c2w: torch.Tensor) -> torch.Tensor:
    """The mean camera ``[4, 4]`` of ``c2w`` ``[N, 3 or 4, 4]``: mean centre, mean back axis, mean up orthogonalised."""
    center = c2w[:, :3, 3].mean(0)
    back = F.normalize(c2w[:, :3, 2].sum(0), dim=0)
    up = c2w[:, :3, 1].sum(0)
    right = F.normalize(torch.linalg.cross(up, back), dim=0)
    up = torch.linalg.cross(back, right)
    out = torch.eye(4, dtype=c2w.dtype)
    out[:3, 0], out[:3, 1], out[:3, 2], out[:3, 3] = right, up, back, center
    return out


def recenter_rescale(
    c2w: torch.Tensor, bounds: torch.Tensor, bd_factor: float = 0.75
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale the scene so the nearest bound is ``1 / bd_factor``, then express the poses in the average camera's frame.

    Args:
        c2w: OpenGL camera-to-world ``[N, 3, 4]``.
        bounds: Near/far bounds ``[N, 2]`` (depths along the camera axis).
        bd_factor: The nearest bound lands at ``1 / bd_factor`` (NeRF: 0.75), leaving room in front of the NDC near
            plane at depth 1.

    Returns:
        ``[N, 4, 4]`` poses whose average pose is the identity, and the rescaled bounds ``[N, 2]``.
    """
    scale = 1.0 / (float(bounds.min()) * bd_factor)
    poses = torch.eye(4, dtype=c2w.dtype).repeat(len(c2w), 1, 1)
    poses[:, :3, :3] = c2w[:, :3, :3]
    poses[:, :3, 3] = c2w[:, :3, 3] * scale
    return torch.linalg.inv(average_pose(poses)) @ poses, bounds * scale


def holdout_split(n: int, every: int = LLFF_HOLDOUT) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test indices: every ``every``-th image (0, every, 2 * every, ...) is a test image."""
    idx = torch.arange(n)
    test = idx % every == 0
    return idx[~test], idx[test]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_llff(root: str | Path, factor: int = 4, bd_factor: float = 0.75) -> LLFFScene:
    """Read an LLFF scene at downsampling ``factor`` (``images_<factor>/``, else ``images/`` resized here).

    Args:
        root: Scene folder (``poses_bounds.npy`` and the image folders).
        factor: Downsampling factor of the images (and focal length); 1 reads ``images/``.
        bd_factor: See :func:`recenter_rescale`.

    Returns:
        The recentred, rescaled scene with all images (split it with :func:`holdout_split`).
    """
    from PIL import Image

    root = Path(root)
    raw = np.load(root / "poses_bounds.npy")
    if raw.ndim != 2 or raw.shape[1] != 17:
        raise ValueError(
            f"{root / 'poses_bounds.npy'} must be [N, 17] (3x5 pose + 2 bounds per image), got {raw.shape}"
        )
    poses = torch.from_numpy(raw[:, :15].reshape(-1, 3, 5)).double()
    bounds = torch.from_numpy(raw[:, 15:17]).double()
    folder = root / (f"images_{factor}" if factor > 1 else "images")
    resize = not folder.is_dir()
    if resize:  # LLFF's own tools write images_<factor>/ with ImageMagick; without it, downsample here.
        folder = root / "images"
    if not folder.is_dir():
        raise FileNotFoundError(f"LLFF scene {root} has neither images_{factor}/ nor images/")
    files = _image_files(folder)
    if len(files) != len(poses):
        raise ValueError(f"{folder} holds {len(files)} images but poses_bounds.npy has {len(poses)} rows")
    _, full_w, full_focal = (float(v) for v in poses[0, :, 4])
    images = []
    for path in files:
        img = Image.open(path).convert("RGB")
        if resize and factor > 1:
            img = img.resize((round(img.width / factor), round(img.height / factor)), Image.Resampling.BOX)
        images.append(torch.from_numpy(np.asarray(img, np.float32) / 255))
    images_t = torch.stack(images)
    # The focal length scales with the width actually read (hwf holds the full-resolution values).
    focal = full_focal * images_t.shape[2] / full_w
    c2w, bounds = recenter_rescale(llff_to_opengl(poses)[:, :, :4], bounds, bd_factor)
    return LLFFScene(images_t, c2w.float(), bounds.float(), focal, [p.name for p in files])


def ndc_rays(
    origins: torch.Tensor, dirs: torch.Tensor, height: int, width: int, focal: float, near: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map camera rays to normalised device coordinates of the reference camera (looking along -z).

    A world point ``(x, y, z)`` (``z < 0`` in front of the camera) has NDC coordinates
    ``(-f / (W / 2) * x / z, -f / (H / 2) * y / z, 1 + 2 * near / z)``: depth ``near`` maps to -1 and infinite depth
    to +1. Rays are first moved to where they cross the near plane ``z = -near``; the NDC ray is then
    ``o' + t d'`` with ``t`` in [0, 1] covering the near plane to infinity.

    Args:
        origins: ``[..., 3]``.
        dirs: ``[..., 3]`` (any length, ``dirs_z != 0``).
        height: Image height.
        width: Image width.
        focal: Focal length in pixels.
        near: Depth of the near plane (1 after :func:`recenter_rescale`).

    Returns:
        NDC origins and directions ``[..., 3]`` (directions not normalised: ``t = 1`` reaches ``z = 1``).
    """
    t = -(near + origins[..., 2]) / dirs[..., 2]
    o = origins + t[..., None] * dirs
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = dirs.unbind(-1)
    ax, ay = -2 * focal / width, -2 * focal / height
    o_ndc = torch.stack([ax * ox / oz, ay * oy / oz, 1 + 2 * near / oz], -1)
    d_ndc = torch.stack([ax * (dx / dz - ox / oz), ay * (dy / dz - oy / oz), -2 * near / oz], -1)
    return o_ndc, d_ndc
