"""A chest CT phantom with exact nodule ground truth: the offline stand-in for UniToChest.

Each scan is built in millimetres: an elliptic body of soft tissue with a fat layer, a spine, two lungs at about
-850 HU crossed by vessels (tubes at soft-tissue HU, the structures that fool a threshold), and nodules: ellipsoids of
chosen diameters, solid (0 to 60 HU) or part-solid (-550 to -250 HU), some with a vessel running into them, whose
edge voxels are partial-volume mixtures with the lung. A Gaussian point spread, noise and a padded circle outside the
field of view complete the picture. The ground-truth mask is the set of voxels whose centre lies inside a nodule
ellipsoid, so every metric computed against it is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from lung_seg.dicom import Geometry, write_nifti, write_series

GENERATOR_VERSION = 1


@dataclass(frozen=True)
class PhantomConfig:
    """Size and content of a phantom scan.

    Attributes:
        matrix: Rows and columns per slice.
        slices: Number of axial slices.
        fov_mm: Field of view across a slice (pixel spacing = fov_mm / matrix).
        slice_mm: Slice thickness and spacing.
        nodules: Nodules per scan (at least).
        diameters_mm: Range of nodule diameters (drawn log-uniformly).
        vessels: Vessel segments per lung.
        noise_hu: Standard deviation of the Gaussian noise.
        blur_mm: Standard deviation of the Gaussian point spread function.
        subsolid_fraction: Share of part-solid/ground-glass nodules (-550 to -250 HU instead of 0 to 60 HU).
        attached_vessel_fraction: Share of nodules with a vessel running into them.
    """

    matrix: int = 96
    slices: int = 32
    fov_mm: float = 240.0
    slice_mm: float = 2.5
    nodules: int = 4
    diameters_mm: tuple[float, float] = (3.0, 30.0)
    vessels: int = 10
    noise_hu: float = 30.0
    blur_mm: float = 1.2
    subsolid_fraction: float = 0.3
    attached_vessel_fraction: float = 0.5


@dataclass
class PhantomScan:
    """One phantom CT scan.

    Attributes:
        hu: ``[Z, H, W]`` float32 in HU.
        mask: ``[Z, H, W]`` uint8 nodule ground truth (voxel centres inside a nodule).
        padding: ``[Z, H, W]`` bool, pixels outside the reconstruction circle.
        spacing: ``(dz, dy, dx)`` mm.
        diameters_mm: Equivalent diameter of each planted nodule.
        lungs: ``[Z, H, W]`` bool lung field (nodules included).
    """

    hu: np.ndarray
    mask: np.ndarray
    padding: np.ndarray
    spacing: tuple[float, float, float]
    diameters_mm: list[float]
    lungs: np.ndarray


def _grid(cfg: PhantomConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dxy = cfg.fov_mm / cfg.matrix
    xy = (np.arange(cfg.matrix) - (cfg.matrix - 1) / 2) * dxy
    z = (np.arange(cfg.slices) - (cfg.slices - 1) / 2) * cfg.slice_mm
    return np.meshgrid(z, xy, xy, indexing="ij")  # z, y, x, each [Z, H, W]


def _segment_distance(z, y, x, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (mm) of every voxel to the segment from ``a`` to ``b`` (points as (z, y, x))."""
    d = b - a
    t = ((z - a[0]) * d[0] + (y - a[1]) * d[1] + (x - a[2]) * d[2]) / max(float(d @ d), 1e-9)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((z - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2 + (x - a[2] - t * d[2]) ** 2)


def _mix(hu: np.ndarray, value: float, fraction: np.ndarray) -> np.ndarray:
    return hu * (1.0 - fraction) + value * fraction


def make_scan(cfg: PhantomConfig, rng: np.random.Generator) -> PhantomScan:
    """Generate one scan from ``rng`` (all randomness comes from it)."""
    z, y, x = _grid(cfg)
    fov = cfg.fov_mm
    voxel = float(np.mean([cfg.slice_mm, fov / cfg.matrix, fov / cfg.matrix]))
    hu = np.full(z.shape, -1000.0, dtype=np.float64)
    ax, ay = fov * rng.uniform(0.40, 0.44), fov * rng.uniform(0.27, 0.31)
    body_r = np.sqrt((x / ax) ** 2 + (y / ay) ** 2)
    hu[body_r <= 1.0] = -100.0  # fat layer
    hu[body_r <= 0.92] = 40.0  # muscle, mediastinum
    spine = np.sqrt(x**2 + (y - 0.72 * ay) ** 2) <= 0.12 * ay
    hu[spine] = 450.0
    # Lungs narrow towards the apex (the first slices), as in a real chest.
    taper = 0.8 + 0.2 * (z - z.min()) / max(float(np.ptp(z)), 1e-9)
    lungs = np.zeros(z.shape, dtype=bool)
    lung_axes = []
    for side in (-1.0, 1.0):
        cx, lx, ly = side * 0.45 * ax, 0.33 * ax * taper, 0.68 * ay * taper
        inside = ((x - cx) / lx) ** 2 + ((y + 0.08 * ay) / ly) ** 2 <= 1.0
        lungs |= inside
        lung_axes.append((cx, float(lx.max()), float(ly.max())))
    hu[lungs] = -850.0 + 30.0 * (y[lungs] / ay)  # gravity: a little denser at the back
    for cx, lx, ly in lung_axes:
        for _ in range(cfg.vessels):
            a = np.array(
                [
                    rng.uniform(z.min(), z.max()),
                    -0.08 * ay + rng.uniform(-0.3, 0.3) * ly,
                    cx + rng.uniform(-0.3, 0.3) * lx,
                ]
            )
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            b = a + direction * rng.uniform(20.0, 60.0)
            radius = rng.uniform(0.6, 2.0)
            frac = np.clip(0.5 - (_segment_distance(z, y, x, a, b) - radius) / voxel, 0.0, 1.0) * lungs
            hu = _mix(hu, 40.0, frac)
    mask = np.zeros(z.shape, dtype=np.uint8)
    diameters = []
    lo, hi = np.log(cfg.diameters_mm[0]), np.log(cfg.diameters_mm[1])
    for i in range(cfg.nodules):
        # Stratify over the log-diameter range so that every scan holds small and large nodules.
        d = float(np.exp(lo + (hi - lo) * (i + rng.uniform()) / cfg.nodules))
        radii = d / 2 * rng.uniform(0.85, 1.15, size=3)
        radii *= (d / 2) / np.prod(radii) ** (1 / 3)  # keep the volume-equivalent diameter at d
        cx, lx, ly = lung_axes[int(rng.integers(2))]
        for _ in range(50):  # a centre that keeps the nodule inside the lung at its mid slice
            c = np.array(
                [
                    rng.uniform(z.min() + radii[0], z.max() - radii[0]) if np.ptp(z) > 2 * radii[0] else 0.0,
                    -0.08 * ay + rng.uniform(-1, 1) * max(0.8 * ly - radii[1], 0.0),
                    cx + rng.uniform(-1, 1) * max(0.8 * lx - radii[2], 0.0),
                ]
            )
            rho = np.sqrt(((z - c[0]) / radii[0]) ** 2 + ((y - c[1]) / radii[1]) ** 2 + ((x - c[2]) / radii[2]) ** 2)
            inside = rho <= 1.0
            if inside.any() and lungs[inside].mean() > 0.95 and not mask[rho <= 1.5].any():
                break
        frac = np.clip(0.5 - (rho - 1.0) * radii.mean() / voxel, 0.0, 1.0)
        solid = rng.uniform() >= cfg.subsolid_fraction
        hu = _mix(hu, float(rng.uniform(0.0, 60.0) if solid else rng.uniform(-550.0, -250.0)), frac)
        if rng.uniform() < cfg.attached_vessel_fraction:  # juxta-vascular: a vessel runs into the nodule
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            dist = _segment_distance(z, y, x, c, c + direction * rng.uniform(25.0, 50.0))
            hu = _mix(hu, 40.0, np.clip(0.5 - (dist - rng.uniform(1.0, 2.0)) / voxel, 0.0, 1.0) * lungs)
        mask[inside] = 1
        diameters.append(d)
    # The scanner's point spread blurs every edge before the (white) noise is added.
    dxy = fov / cfg.matrix
    hu = ndimage.gaussian_filter(hu, sigma=(cfg.blur_mm / cfg.slice_mm, cfg.blur_mm / dxy, cfg.blur_mm / dxy))
    hu += rng.normal(0.0, cfg.noise_hu, size=hu.shape)
    padding = np.broadcast_to(np.sqrt(x**2 + y**2) > fov / 2, hu.shape).copy()
    hu[padding] = -1000.0
    return PhantomScan(hu.astype(np.float32), mask, padding, (cfg.slice_mm, dxy, dxy), diameters, lungs | (mask > 0))


def write_dataset(
    root: Path | str, cfg: PhantomConfig, patients: int, seed: int, scans_per_patient: Sequence[int] = (1, 2)
) -> list[Path]:
    """Write ``patients`` phantom patients as ``root/<patient>/<scan>/IM*.dcm`` + ``mask.nii.gz``.

    Patients have one or two scans (UniToChest has 715 scans of 623 patients), which is what makes a patient-level
    split different from a scan-level one. Slice files are numbered in a shuffled order.

    Returns:
        The scan folders.
    """
    root = Path(root)
    folders = []
    for p in range(patients):
        rng = np.random.default_rng([seed, p])
        for s in range(int(rng.choice(scans_per_patient))):
            scan_rng = np.random.default_rng([seed, p, s])
            scan = make_scan(cfg, scan_rng)
            folder = root / f"P{p:04d}" / f"S{s}"
            origin = (-cfg.fov_mm / 2, -cfg.fov_mm / 2, float(scan_rng.uniform(-300, -200)))
            write_series(
                folder,
                scan.hu,
                scan.spacing,
                patient_id=f"P{p:04d}",
                origin=origin,
                padding=scan.padding,
                file_order=scan_rng.permutation(cfg.slices),
                uid_seed=f"{seed}",
            )
            geometry = _geometry_of(scan.spacing, origin)
            write_nifti(folder / "mask.nii.gz", scan.mask, geometry)
            folders.append(folder)
    return folders


def _geometry_of(spacing: tuple[float, float, float], origin: tuple[float, float, float]) -> Geometry:
    """The geometry :func:`lung_seg.dicom.read_series` finds for an axial series written by ``write_series``."""
    dz, dy, dx = spacing
    affine = np.diag([-dx, -dy, dz, 1.0])
    affine[:3, 3] = [-origin[0], -origin[1], origin[2]]
    return Geometry(affine, spacing)
