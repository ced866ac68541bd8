"""A minimal reader for COLMAP sparse models (binary or text): pinhole cameras, posed images, coloured points."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# COLMAP camera model id -> (name, number of parameters). Distortion terms are ignored (undistorted datasets).
_MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5), 4: ("OPENCV", 8)}


@dataclass
class ColmapModel:
    """A sparse reconstruction.

    Attributes:
        names: Image file names ``[M]`` sorted alphabetically.
        viewmats: World-to-camera matrices ``[M, 4, 4]`` (OpenCV convention, as COLMAP stores them).
        Ks: Intrinsics ``[M, 3, 3]`` at the camera's stored resolution.
        sizes: ``(width, height)`` per image.
        points: Sparse points ``[P, 3]``.
        colors: Their colours ``[P, 3]`` in [0, 1].
    """

    names: list[str]
    viewmats: torch.Tensor
    Ks: torch.Tensor
    sizes: list[tuple[int, int]]
    points: torch.Tensor
    colors: torch.Tensor


def _intrinsics(model: str, params: list[float]) -> torch.Tensor:
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        fx = fy = params[0]
        cx, cy = params[1], params[2]
    else:
        fx, fy, cx, cy = params[:4]
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def _read_binary(root: Path) -> tuple[dict, list, np.ndarray, np.ndarray]:
    cams = {}
    with open(root / "cameras.bin", "rb") as f:
        for _ in range(struct.unpack("<Q", f.read(8))[0]):
            cam_id, model_id, width, height = struct.unpack("<iiQQ", f.read(24))
            name, n = _MODELS[model_id]
            cams[cam_id] = (name, width, height, list(struct.unpack(f"<{n}d", f.read(8 * n))))
    images = []
    with open(root / "images.bin", "rb") as f:
        for _ in range(struct.unpack("<Q", f.read(8))[0]):
            props = struct.unpack("<idddddddi", f.read(64))
            name = b""
            while (c := f.read(1)) != b"\x00":
                name += c
            n2d = struct.unpack("<Q", f.read(8))[0]
            f.seek(24 * n2d, 1)
            images.append((name.decode(), np.array(props[1:5]), np.array(props[5:8]), props[8]))
    with open(root / "points3D.bin", "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        xyz, rgb = np.zeros((n, 3)), np.zeros((n, 3))
        for i in range(n):
            vals = struct.unpack("<QdddBBBd", f.read(43))
            xyz[i], rgb[i] = vals[1:4], vals[4:7]
            f.seek(8 * struct.unpack("<Q", f.read(8))[0], 1)
    return cams, images, xyz, rgb


def _read_text(root: Path) -> tuple[dict, list, np.ndarray, np.ndarray]:
    def lines(name: str) -> list[str]:
        return [ln for ln in (root / name).read_text().splitlines() if ln.strip() and not ln.startswith("#")]

    cams = {}
    for ln in lines("cameras.txt"):
        parts = ln.split()
        cams[int(parts[0])] = (parts[1], int(parts[2]), int(parts[3]), [float(v) for v in parts[4:]])
    images = []
    # Every image line is followed by its 2D-points line, which may be empty: keep blank lines here.
    image_lines = [ln for ln in (root / "images.txt").read_text().splitlines() if not ln.startswith("#")]
    for ln in image_lines[::2]:
        if not ln.strip():
            continue
        parts = ln.split()
        vals = [float(v) for v in parts[1:8]]
        images.append((parts[9], np.array(vals[:4]), np.array(vals[4:7]), int(parts[8])))
    pts = [ln.split() for ln in lines("points3D.txt")]
    xyz = np.array([[float(v) for v in p[1:4]] for p in pts]).reshape(-1, 3)
    rgb = np.array([[float(v) for v in p[4:7]] for p in pts]).reshape(-1, 3)
    return cams, images, xyz, rgb


def read_colmap(sparse_dir: str | Path) -> ColmapModel:
    """Read ``cameras``, ``images`` and ``points3D`` (``.bin`` preferred, ``.txt`` otherwise) from ``sparse_dir``."""
    root = Path(sparse_dir)
    cams, images, xyz, rgb = _read_binary(root) if (root / "cameras.bin").is_file() else _read_text(root)
    images.sort(key=lambda im: im[0])
    viewmats, Ks, sizes = [], [], []
    for _, qvec, tvec, cam_id in images:
        view = np.eye(4)
        view[:3, :3], view[:3, 3] = _quat_to_rotmat(qvec), tvec
        viewmats.append(torch.from_numpy(view).float())
        model, width, height, params = cams[cam_id]
        Ks.append(_intrinsics(model, params))
        sizes.append((width, height))
    return ColmapModel(
        [im[0] for im in images],
        torch.stack(viewmats),
        torch.stack(Ks),
        sizes,
        torch.from_numpy(xyz).float(),
        torch.from_numpy(rgb / 255.0).float(),
    )
