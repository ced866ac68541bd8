import numpy as np
import pydicom
import pytest
from lung_seg.dicom import (
    DicomSeriesError,
    read_nifti,
    read_series,
    read_series_dir,
    to_hu,
    window,
    write_nifti,
    write_series,
)
from pydicom.data import get_testdata_file


def test_hu_conversion_hand_values():
    stored = np.array([[-2000, 0, 1024], [2024, 100, -2000]], dtype=np.int16)
    hu = to_hu(stored, slope=1.0, intercept=-1024.0)
    # padding -> stored 0 -> -1024 HU (air); the rest is stored * 1 - 1024
    np.testing.assert_array_equal(hu, [[-1024, -1024, 0], [1000, -924, -1024]])
    np.testing.assert_allclose(to_hu(np.array([10], np.int16), 2.5, -100.0, None), [-75.0])


def test_window_hand_values():
    hu = np.array([-2000.0, -1300.0, -500.0, -100.0, 300.0, 1000.0])
    # centre -500, width 1600 -> [-1300, 300] maps linearly to [0, 1]
    np.testing.assert_allclose(window(hu), [0.0, 0.0, 0.5, 0.75, 1.0, 1.0])
    np.testing.assert_array_equal(window(hu, bits=8), [0, 0, 128, 191, 255, 255])  # rint(127.5) = 128 (even)


def test_pydicom_ct_small_loads():
    path = get_testdata_file("CT_small.dcm")
    hu, geometry, _ = read_series([path])
    ds = pydicom.dcmread(path)
    assert hu.shape == (1, 128, 128)
    expect = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(hu[0], expect)
    assert geometry.spacing[1:] == pytest.approx(tuple(float(v) for v in ds.PixelSpacing))


def test_series_order_ignores_file_names(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 400, size=(7, 6, 5)).astype(np.float32)
    order = rng.permutation(7)
    write_series(tmp_path, volume, (2.0, 0.7, 0.8), patient_id="X", origin=(1.0, 2.0, -50.0), file_order=order)
    files = sorted(tmp_path.glob("*.dcm"))
    rng.shuffle(files)
    hu, geometry, ordered = read_series(files)
    np.testing.assert_array_equal(hu, volume)
    z = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in ordered]
    assert z == sorted(z)
    assert geometry.spacing == pytest.approx((2.0, 0.7, 0.8))


def test_missing_tag_names_the_file(tmp_path):
    write_series(tmp_path, np.zeros((2, 4, 4), np.float32), (1.0, 1.0, 1.0), patient_id="X")
    bad = tmp_path / "IM0001.dcm"
    ds = pydicom.dcmread(bad)
    del ds.ImagePositionPatient
    ds.save_as(bad)
    with pytest.raises(DicomSeriesError, match=r"IM0001\.dcm.*ImagePositionPatient"):
        read_series_dir(tmp_path)
    (tmp_path / "IM0001.dcm").write_bytes(b"not dicom")
    with pytest.raises(DicomSeriesError, match=r"IM0001\.dcm"):
        read_series_dir(tmp_path)


def test_nifti_geometry_matches_the_series(tmp_path):
    import nibabel as nib

    spacing, origin = (2.5, 0.6, 0.9), (-10.0, 20.0, 100.0)
    write_series(tmp_path / "ct", np.zeros((4, 5, 6), np.float32), spacing, patient_id="X", origin=origin)
    _, geometry, _ = read_series_dir(tmp_path / "ct")
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[3, 4, 1] = 1  # slice 3, row 4, column 1
    write_nifti(tmp_path / "m.nii.gz", mask, geometry)
    image = nib.load(tmp_path / "m.nii.gz")
    assert image.header.get_zooms() == pytest.approx((0.9, 0.6, 2.5))  # (column, row, slice) spacing
    # The voxel lands where DICOM puts it: LPS = origin + col*dx*x + row*dy*y + slice*dz*z, RAS = (-L, -P, S).
    i, j, k = np.argwhere(np.asarray(image.dataobj))[0]
    lps = np.array(origin) + np.array([1 * 0.9, 4 * 0.6, 3 * 2.5])
    np.testing.assert_allclose(image.affine @ [i, j, k, 1], [-lps[0], -lps[1], lps[2], 1])
    np.testing.assert_array_equal(read_nifti(tmp_path / "m.nii.gz", like=geometry), mask)
