"""From a scan folder to cached, windowed 8-bit slices with their nodule masks; patient-level splits."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from reprokit.data import split_indices
from scipy import ndimage

from lung_seg.dicom import DicomSeriesError, Geometry, read_nifti, read_series_dir, window
from lung_seg.metrics import equivalent_diameter

MASK_NAME = "mask.nii.gz"


@dataclass
class Scan:
    """One preprocessed scan.

    Attributes:
        name: ``<patient>/<scan>``.
        image: ``[Z, H, W]`` uint8, the windowed CT (centre -500, width 1600).
        mask: ``[Z, H, W]`` uint8 nodule mask.
        affine: 4x4 NIfTI affine of the CT.
        spacing: ``(dz, dy, dx)`` mm.
    """

    name: str
    image: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def geometry(self) -> Geometry:
        """The CT's geometry."""
        return Geometry(self.affine, self.spacing)


def read_mask(folder: Path, geometry: Geometry, ordered: Sequence[Path], shape: tuple[int, ...]) -> np.ndarray:
    """The nodule mask of a scan folder: ``mask.nii.gz`` or one ``masks/<dicom stem>.png`` per slice with nodules."""
    if (folder / MASK_NAME).is_file():
        mask = read_nifti(folder / MASK_NAME, like=geometry)
    elif (folder / "masks").is_dir():
        from PIL import Image

        mask = np.zeros(shape, dtype=np.uint8)
        for z, path in enumerate(ordered):
            png = folder / "masks" / f"{path.stem}.png"
            if png.is_file():
                mask[z] = np.asarray(Image.open(png).convert("L")) > 127
    else:
        raise DicomSeriesError(f"{folder}: no nodule mask ({MASK_NAME} or masks/<slice>.png)")
    if mask.shape != shape:
        raise DicomSeriesError(f"{folder}: mask shape {mask.shape} differs from the CT's {shape}")
    return (mask > 0).astype(np.uint8)


def load_scan(folder: Path, root: Path, center: float = -500.0, width: float = 1600.0) -> Scan:
    """Read, order, convert to HU and window one scan folder (``*.dcm`` + mask)."""
    hu, geometry, ordered = read_series_dir(folder)
    mask = read_mask(folder, geometry, ordered, hu.shape)
    image = window(hu, center, width, bits=8)
    return Scan(str(folder.relative_to(root)), image, mask, geometry.affine, geometry.spacing)


def cached_scan(folder: Path, root: Path, cache: Path, center: float = -500.0, width: float = 1600.0) -> Scan:
    """:func:`load_scan` through an ``.npz`` cache (written atomically, keyed by path, window and file times)."""
    files = sorted(folder.iterdir())
    stamp = json.dumps([str(folder.resolve()), center, width, [(f.name, f.stat().st_mtime_ns) for f in files]])
    path = cache / f"{hashlib.sha1(stamp.encode()).hexdigest()[:20]}.npz"
    if path.is_file():
        with np.load(path) as z:
            return Scan(str(z["name"]), z["image"], z["mask"], z["affine"], tuple(z["spacing"].tolist()))
    scan = load_scan(folder, root, center, width)
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, suffix=".npz")
    os.close(fd)
    np.savez_compressed(
        tmp, name=scan.name, image=scan.image, mask=scan.mask, affine=scan.affine, spacing=np.asarray(scan.spacing)
    )
    os.replace(tmp, path)  # two DDP ranks may race here; both write the same content
    return scan


def scan_folders(root: Path) -> list[Path]:
    """Every ``<patient>/<scan>`` folder holding DICOM files under ``root``, sorted."""
    return sorted({p.parent for p in root.glob("*/*/*.dcm")})


def patient_split(names: Sequence[str], fractions: Sequence[float], seed: int) -> list[list[str]]:
    """Split scans ``<patient>/<scan>`` into disjoint sets so that all scans of a patient land in the same set.

    Args:
        names: Scan names; the patient is the part before the first ``/``.
        fractions: Share of patients per set (summing to 1).
        seed: Split seed.
    """
    patients = sorted({n.split("/")[0] for n in names})
    parts = split_indices(len(patients), list(fractions), seed)
    out = []
    for idx in parts:
        chosen = {patients[i] for i in idx.tolist()}
        out.append([n for n in names if n.split("/")[0] in chosen])
    return out


def small_nodule_slices(mask: np.ndarray, spacing: Sequence[float], max_diameter_mm: float) -> np.ndarray:
    """Which slices of a mask ``[Z, H, W]`` cut a nodule smaller than ``max_diameter_mm`` (``[Z]`` bool).

    Nodules are the 3D connected components (26-connectivity) of the mask, sized by their equivalent diameter.
    """
    labels, n = ndimage.label(mask > 0, np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    small = equivalent_diameter(sizes, spacing) < max_diameter_mm
    small[0] = False  # background
    return small[labels].reshape(mask.shape[0], -1).any(1)


def select_slices(
    scans: Sequence[Scan],
    empty_fraction: float,
    seed: int,
    small_nodule_mm: float = 10.0,
    small_nodule_repeat: int = 1,
) -> list[tuple[int, int]]:
    """``(scan, slice)`` pairs: every slice with a nodule, plus ``empty_fraction`` of that count of empty slices.

    The paper trains on nodule slices only; its PyTorch baseline adds 10% empty slices. Empty slices are drawn
    without replacement, the same for the same seed. Slices that cut a nodule smaller than ``small_nodule_mm`` are
    listed ``small_nodule_repeat`` times (oversampling): a 4 mm nodule spans one or two slices against ten for a
    25 mm one, so without it small nodules are a few percent of what the network sees.
    """
    if small_nodule_repeat < 1:
        raise ValueError(f"small_nodule_repeat must be >= 1, got {small_nodule_repeat}")
    full, empty, extra = [], [], []
    for s, scan in enumerate(scans):
        has = scan.mask.reshape(scan.mask.shape[0], -1).any(1)
        full += [(s, int(z)) for z in np.flatnonzero(has)]
        empty += [(s, int(z)) for z in np.flatnonzero(~has)]
        if small_nodule_repeat > 1:
            small = np.flatnonzero(small_nodule_slices(scan.mask, scan.spacing, small_nodule_mm))
            extra += [(s, int(z)) for z in small] * (small_nodule_repeat - 1)
    n_empty = min(len(empty), round(empty_fraction * len(full)))
    pick = torch.randperm(len(empty), generator=torch.Generator().manual_seed(seed))[:n_empty].sort().values
    return sorted(full + extra + [empty[i] for i in pick.tolist()])
