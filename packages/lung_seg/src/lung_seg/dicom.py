"""DICOM series I/O: read and order a CT series, convert to Hounsfield units, window, write series and NIfTI.

Arrays are ``[Z, H, W]`` (slice, row, column) in the order of the sorted series. The patient geometry of a series is
kept as a 4x4 affine in NIfTI's RAS convention, so a mask written with it overlays the CT in any viewer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

#: Stored value that marks pixels outside the reconstruction circle in the paper's data.
DEFAULT_PADDING_VALUE = -2000
REQUIRED_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept")


class DicomSeriesError(ValueError):
    """A DICOM file is unreadable or lacks what the pipeline needs; the message names the file."""


@dataclass(frozen=True)
class Geometry:
    """Where the voxels of a ``[Z, H, W]`` volume sit in patient space.

    Attributes:
        affine: 4x4 voxel-to-world matrix in RAS millimetres for NIfTI index order ``(column, row, slice)``.
        spacing: ``(dz, dy, dx)`` in millimetres (slice step, row step, column step).
    """

    affine: np.ndarray
    spacing: tuple[float, float, float]


def to_hu(stored: np.ndarray, slope: float, intercept: float, padding_value: int | None = DEFAULT_PADDING_VALUE):
    """Hounsfield units of stored pixel values.

    Padding pixels (outside the scanner's field of view) are set to stored value 0 before rescaling, so they end up
    at ``intercept`` (air for the usual -1024) instead of an impossible -3000 HU.

    Args:
        stored: Stored pixel values, any shape.
        slope: RescaleSlope.
        intercept: RescaleIntercept.
        padding_value: Stored value that marks padding, or None.

    Returns:
        float32 array of the same shape, in HU.
    """
    values = stored.astype(np.float32)
    if padding_value is not None:
        values[stored == padding_value] = 0.0
    return values * np.float32(slope) + np.float32(intercept)


def window(hu: np.ndarray, center: float = -500.0, width: float = 1600.0, bits: int | None = None) -> np.ndarray:
    """Linear VOI window: ``[center - width/2, center + width/2]`` maps to ``[0, 1]``, clipped outside.

    Args:
        hu: Values in HU, any shape.
        center: Window centre (the paper: -500).
        width: Window width (the paper: 1600).
        bits: None for float32 in [0, 1]; 8 for uint8 in [0, 255] (rounded), as the paper stores its slices.
    """
    scaled = np.clip((hu.astype(np.float32) - (center - width / 2)) / width, 0.0, 1.0)
    if bits is None:
        return scaled
    top = 2**bits - 1
    return np.rint(scaled * top).astype(np.uint8 if bits <= 8 else np.uint16)


def _read_header(path: Path) -> pydicom.Dataset:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=False)
    except Exception as err:
        raise DicomSeriesError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from None
    missing = [tag for tag in REQUIRED_TAGS if tag not in ds]
    if missing:
        raise DicomSeriesError(f"{path}: missing DICOM tag(s) {', '.join(missing)}")
    if "PixelData" not in ds:
        raise DicomSeriesError(f"{path}: has no pixel data")
    return ds


def _slice_normal(ds: pydicom.Dataset) -> np.ndarray:
    orient = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    return np.cross(orient[:3], orient[3:])


def read_series(paths: Sequence[Path | str]) -> tuple[np.ndarray, Geometry, list[Path]]:
    """Read one CT series, order its slices along the slice normal and convert them to HU.

    File names and InstanceNumber are not trusted: slices are sorted by the projection of ImagePositionPatient on
    the normal of ImageOrientationPatient, which is what fixes their place in the patient.

    Args:
        paths: The series' files, in any order.

    Returns:
        ``(hu [Z, H, W] float32, geometry, paths in slice order)``.

    Raises:
        DicomSeriesError: Unreadable file, missing tags, mixed orientations or sizes, or duplicate positions.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise DicomSeriesError("empty DICOM series: no files given")
    headers = [_read_header(p) for p in paths]
    normal = _slice_normal(headers[0])
    for path, ds in zip(paths, headers):
        if not np.allclose(_slice_normal(ds), normal, atol=1e-4):
            raise DicomSeriesError(f"{path}: ImageOrientationPatient differs from {paths[0].name} (mixed series?)")
        if (ds.Rows, ds.Columns) != (headers[0].Rows, headers[0].Columns):
            raise DicomSeriesError(
                f"{path}: {ds.Rows}x{ds.Columns} pixels, but {paths[0].name} has {headers[0].Rows}x{headers[0].Columns}"
            )
    position = np.array([np.dot(np.asarray(ds.ImagePositionPatient, dtype=np.float64), normal) for ds in headers])
    order = np.argsort(position, kind="stable")
    steps = np.diff(position[order])
    if len(steps) and np.min(steps) < 1e-3:
        dup = paths[order[int(np.argmin(steps)) + 1]]
        raise DicomSeriesError(f"{dup}: two slices of the series share one position")
    volume = []
    for k in order:
        ds = headers[k]
        try:
            stored = ds.pixel_array
        except Exception as err:
            raise DicomSeriesError(f"{paths[k]}: pixel data cannot be decoded ({type(err).__name__})") from None
        padding = ds.get("PixelPaddingValue", DEFAULT_PADDING_VALUE)
        volume.append(to_hu(stored, float(ds.RescaleSlope), float(ds.RescaleIntercept), padding))
    first = headers[order[0]]
    dz = float(np.median(steps)) if len(steps) else float(first.get("SliceThickness", 1.0))
    geometry = _geometry(first, normal, dz)
    return np.stack(volume), geometry, [paths[k] for k in order]


def _geometry(first: pydicom.Dataset, normal: np.ndarray, dz: float) -> Geometry:
    orient = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    dy, dx = (float(v) for v in first.PixelSpacing)  # DICOM: row spacing first, then column spacing
    lps = np.eye(4)
    lps[:3, 0] = orient[:3] * dx  # NIfTI index i walks along a row (column index)
    lps[:3, 1] = orient[3:] * dy
    lps[:3, 2] = normal * dz
    lps[:3, 3] = np.asarray(first.ImagePositionPatient, dtype=np.float64)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM is LPS, NIfTI is RAS
    return Geometry(ras, (dz, dy, dx))


def read_series_dir(folder: Path | str, pattern: str = "*.dcm") -> tuple[np.ndarray, Geometry, list[Path]]:
    """:func:`read_series` of every file matching ``pattern`` in ``folder``."""
    folder = Path(folder)
    paths = sorted(folder.glob(pattern))
    if not paths:
        raise DicomSeriesError(f"{folder}: no DICOM files matching '{pattern}'")
    return read_series(paths)


def write_series(
    folder: Path | str,
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    patient_id: str,
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    padding: np.ndarray | None = None,
    intercept: float = -1024.0,
    file_order: Sequence[int] | None = None,
    uid_seed: str = "",
) -> list[Path]:
    """Write a volume in HU as an axial CT series of int16 DICOM files (one per slice).

    Args:
        folder: Output folder (created).
        hu: Volume ``[Z, H, W]`` in HU.
        spacing: ``(dz, dy, dx)`` in mm.
        patient_id: PatientID tag.
        origin: ImagePositionPatient of the first slice (LPS, mm).
        padding: Optional bool ``[Z, H, W]``: pixels stored as the padding value -2000.
        intercept: RescaleIntercept (slope is 1).
        file_order: ``file_order[k]`` numbers the file of slice ``k`` (to test that names are not trusted).
        uid_seed: Makes the UIDs reproducible.

    Returns:
        The written paths, in slice order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stored = np.rint(hu - intercept).clip(-32768, 32767).astype(np.int16)
    if padding is not None:
        stored[padding] = DEFAULT_PADDING_VALUE
    dz, dy, dx = spacing
    study, series = (generate_uid(entropy_srcs=[uid_seed, patient_id, kind]) for kind in ("study", "series"))
    paths = []
    for k in range(hu.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, patient_id, str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        number = k if file_order is None else int(file_order[k])
        path = folder / f"IM{number:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.PatientID, ds.PatientName = "CT", patient_id, patient_id
        ds.InstanceNumber = number + 1
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2] + k * dz)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(dy), float(dx)]
        ds.SliceThickness = float(dz)
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, float(intercept)
        ds.PixelPaddingValue = DEFAULT_PADDING_VALUE
        ds.WindowCenter, ds.WindowWidth = -500.0, 1600.0
        ds.PixelData = stored[k].tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_nifti(path: Path | str, volume: np.ndarray, geometry: Geometry) -> Path:
    """Write ``volume [Z, H, W]`` as NIfTI with the CT's geometry (index order ``(column, row, slice)``)."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.ascontiguousarray(np.transpose(volume, (2, 1, 0))), geometry.affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)
    return path


def read_nifti(path: Path | str, like: Geometry | None = None) -> np.ndarray:
    """Read a NIfTI volume back as ``[Z, H, W]``; with ``like``, check it sits where that CT sits."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj)
    except Exception as err:
        raise DicomSeriesError(f"{path}: not a readable NIfTI file ({type(err).__name__})") from None
    if like is not None and not np.allclose(image.affine, like.affine, atol=1e-3):
        raise DicomSeriesError(f"{path}: its geometry (affine) does not match the CT series it belongs to")
    return np.transpose(data, (2, 1, 0))
