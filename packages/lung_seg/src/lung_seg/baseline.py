"""The traditional baseline: HU thresholds, morphology and connected components inside a lung mask."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def lung_mask(hu: np.ndarray, air_hu: float = -400.0) -> np.ndarray:
    """Lung fields of a CT volume ``[Z, H, W]`` (bool, same shape), nodules and vessels included.

    Air inside the body is found per slice as the dark regions that do not touch the image border; holes (vessels,
    nodules) are filled slice by slice, and a closing puts back nodules that sit on the pleura.
    """
    lungs = np.zeros(hu.shape, dtype=bool)
    for z in range(hu.shape[0]):
        air, _n = ndimage.label(hu[z] < air_hu)
        border = np.unique(np.concatenate([air[0], air[-1], air[:, 0], air[:, -1]]))
        inside = (air > 0) & ~np.isin(air, border)
        inside = ndimage.binary_closing(inside, np.ones((5, 5), bool), iterations=2, border_value=0)
        lungs[z] = ndimage.binary_fill_holes(inside)
    return lungs


def threshold_segment(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    nodule_hu: float = -400.0,
    opening_mm: float = 3.0,
    min_diameter_mm: float = 3.0,
) -> np.ndarray:
    """Segment nodules the traditional way.

    1. lung mask (:func:`lung_mask`); 2. voxels above ``nodule_hu`` inside it; 3. a 3D opening with a ball of
    diameter ``opening_mm`` removes thin vessels; 4. connected components smaller than a sphere of
    ``min_diameter_mm`` are dropped.

    Args:
        hu: CT volume ``[Z, H, W]`` in HU.
        spacing: ``(dz, dy, dx)`` in mm.
        nodule_hu: Density threshold.
        opening_mm: Diameter of the opening element.
        min_diameter_mm: Smallest kept component (equivalent diameter).

    Returns:
        Binary mask ``[Z, H, W]`` (uint8).
    """
    dense = (hu > nodule_hu) & lung_mask(hu)
    radius = [max(round(opening_mm / 2 / s), 0) for s in spacing]
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball = sum((g * s / (opening_mm / 2)) ** 2 for g, s in zip(grid, spacing)) <= 1.0
    opened = ndimage.binary_opening(dense, ball)
    labels, n = ndimage.label(opened, np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * float(np.prod(spacing))
    keep = sizes >= np.pi / 6 * min_diameter_mm**3
    keep[0] = False
    return keep[labels].astype(np.uint8)
