"""Whole-scan inference: segment every slice of a series, assemble the 3D mask, clean it up, write NIfTI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from lung_seg.dicom import Geometry, read_series_dir, window, write_nifti


@torch.no_grad()
def predict_volume(
    model: Callable[[torch.Tensor], torch.Tensor], image: np.ndarray, batch_size: int = 16, device: str = "cpu"
) -> np.ndarray:
    """Nodule probabilities of every slice of a windowed volume.

    Args:
        model: Maps windowed slices ``[B, 1, H, W]`` in [0, 1] to logits ``[B, 1, H, W]`` (in eval mode).
        image: ``[Z, H, W]`` uint8 (windowed 8-bit CT) or float in [0, 1].
        batch_size: Slices per forward pass.
        device: Where to run the model.

    Returns:
        ``[Z, H, W]`` float32 probabilities.
    """
    scale = 255.0 if image.dtype == np.uint8 else 1.0
    out = np.empty(image.shape, dtype=np.float32)
    for start in range(0, image.shape[0], batch_size):
        chunk = torch.from_numpy(image[start : start + batch_size].astype(np.float32) / scale).unsqueeze(1)
        out[start : start + batch_size] = torch.sigmoid(model(chunk.to(device))).squeeze(1).float().cpu().numpy()
    return out


def remove_small_components(mask: np.ndarray, spacing: tuple[float, ...], min_diameter_mm: float) -> np.ndarray:
    """Drop 3D connected components whose volume is below that of a sphere of ``min_diameter_mm``."""
    labels, n = ndimage.label(mask > 0, np.ones((3, 3, 3), bool))
    volume = np.bincount(labels.ravel(), minlength=n + 1) * float(np.prod(spacing))
    keep = volume >= np.pi / 6 * min_diameter_mm**3
    keep[0] = False
    return keep[labels].astype(np.uint8)


def segment_series(
    model: Callable[[torch.Tensor], torch.Tensor],
    folder: Path | str,
    out: Path | str | None = None,
    *,
    threshold: float = 0.5,
    min_diameter_mm: float | None = None,
    center: float = -500.0,
    width: float = 1600.0,
    batch_size: int = 16,
) -> tuple[np.ndarray, Geometry]:
    """Segment a DICOM series folder; optionally write the mask as NIfTI with the CT's geometry.

    Args:
        model: See :func:`predict_volume`.
        folder: Folder of the series' ``*.dcm`` files.
        out: NIfTI path to write, or None.
        threshold: Probability threshold.
        min_diameter_mm: Remove components smaller than this (connected-component post-processing), or None.
        center: Window centre.
        width: Window width.
        batch_size: Slices per forward pass.

    Returns:
        The mask ``[Z, H, W]`` uint8 and the CT's geometry.
    """
    hu, geometry, _ = read_series_dir(folder)
    mask = (predict_volume(model, window(hu, center, width, bits=8), batch_size) > threshold).astype(np.uint8)
    if min_diameter_mm:
        mask = remove_small_components(mask, geometry.spacing, min_diameter_mm)
    if out is not None:
        write_nifti(out, mask, geometry)
    return mask, geometry
