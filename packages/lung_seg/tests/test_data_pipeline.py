import numpy as np
import pytest
import torch
from lung_seg.baseline import threshold_segment
from lung_seg.data import LungCTDataModule
from lung_seg.dicom import read_nifti, read_series_dir
from lung_seg.inference import remove_small_components, segment_series
from lung_seg.metrics import equivalent_diameter, score_nodules
from lung_seg.phantom import PhantomConfig, make_scan, write_dataset
from lung_seg.preprocess import Scan, patient_split, select_slices, small_nodule_slices
from reprokit.data import DatasetNotFoundError

SMALL = PhantomConfig(matrix=48, slices=12, slice_mm=5.0, nodules=3)


def test_patient_split_has_no_leakage():
    names = [f"P{p:03d}/S{s}" for p in range(40) for s in range(1 + p % 3)]
    train, val, test = patient_split(names, (0.6, 0.2, 0.2), seed=3)
    assert sorted(train + val + test) == sorted(names)
    patients = [{n.split("/")[0] for n in part} for part in (train, val, test)]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert patient_split(names, (0.6, 0.2, 0.2), seed=3)[2] == test


def test_select_slices_keeps_nodule_slices_and_a_fraction_of_empty_ones():
    mask = np.zeros((10, 4, 4), np.uint8)
    mask[[2, 3, 7], 1, 1] = 1
    scan = Scan("P/S", np.zeros_like(mask), mask, np.eye(4), (1.0, 1.0, 1.0))
    assert select_slices([scan], 0.0, 0) == [(0, 2), (0, 3), (0, 7)]
    pairs = select_slices([scan], 2 / 3, 0)  # 2 empty slices for 3 nodule slices
    assert len(pairs) == 5 and {(0, 2), (0, 3), (0, 7)} <= set(pairs)


def test_small_nodule_slices_are_oversampled():
    # Two cubes with 1 mm voxels: 3x3x3 (27 mm^3, diameter 3.72 mm) on slices 1-3 and 12^3 (diameter 14.9 mm) on
    # slices 8-19.
    mask = np.zeros((24, 16, 16), np.uint8)
    mask[1:4, 2:5, 2:5] = 1
    mask[8:20, 2:14, 2:14] = 1
    assert equivalent_diameter(27, (1, 1, 1)) == pytest.approx((6 * 27 / np.pi) ** (1 / 3))
    scan = Scan("P/S", np.zeros_like(mask), mask, np.eye(4), (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(np.flatnonzero(small_nodule_slices(mask, (1, 1, 1), 10.0)), [1, 2, 3])
    # With 2 mm voxels the big cube is 29.8 mm and the small one 7.4 mm: still only the first is small.
    np.testing.assert_array_equal(np.flatnonzero(small_nodule_slices(mask, (2, 2, 2), 10.0)), [1, 2, 3])
    pairs = select_slices([scan], 0.0, 0, small_nodule_mm=10.0, small_nodule_repeat=3)
    assert len(pairs) == 3 * 3 + 12
    assert pairs.count((0, 2)) == 3 and pairs.count((0, 10)) == 1
    assert select_slices([scan], 0.0, 0, small_nodule_mm=2.0, small_nodule_repeat=3) == select_slices([scan], 0.0, 0)


def test_phantom_ground_truth_is_exact_and_sized():
    cfg = PhantomConfig(matrix=96, slices=40, slice_mm=1.5, nodules=3, diameters_mm=(8.0, 24.0))
    scan = make_scan(cfg, np.random.default_rng(5))
    scores = score_nodules(scan.mask, scan.mask, scan.spacing)
    # every planted nodule is one component whose volume-equivalent diameter is the planted one (up to voxelisation)
    np.testing.assert_allclose(np.sort(scores.diameter_mm), np.sort(scan.diameters_mm), rtol=0.15)
    assert (scan.lungs[scan.mask > 0]).all()
    assert scan.hu[scan.mask > 0].mean() > scan.hu[scan.lungs & (scan.mask == 0)].mean() + 300


def test_phantom_series_round_trips_through_dicom(tmp_path):
    folder = write_dataset(tmp_path, SMALL, patients=1, seed=7, scans_per_patient=(1,))[0]
    hu, geometry, _ = read_series_dir(folder)
    scan = make_scan(SMALL, np.random.default_rng([7, 0, 0]))
    inside = ~scan.padding
    np.testing.assert_allclose(hu[inside], scan.hu[inside], atol=0.5)  # int16 storage rounds to 1 HU
    assert (hu[scan.padding] == -1024).all()  # padding value -2000 -> stored 0 -> intercept
    np.testing.assert_array_equal(read_nifti(folder / "mask.nii.gz", like=geometry), scan.mask)


def test_threshold_baseline_finds_a_solid_nodule_and_drops_a_thin_vessel():
    spacing = (1.0, 1.0, 1.0)
    hu = np.full((30, 60, 60), -1000.0)
    hu[:, 5:55, 5:55] = 40.0  # body
    hu[:, 10:50, 10:50] = -850.0  # lung
    grid = np.indices(hu.shape)
    nodule = ((grid[0] - 15) ** 2 + (grid[1] - 30) ** 2 + (grid[2] - 22) ** 2) <= 16
    hu[nodule] = 30.0
    hu[:, 40, 40] = 40.0  # a one-voxel vessel along z
    pred = threshold_segment(hu, spacing)
    scores = score_nodules(pred, nodule.astype(np.uint8), spacing)
    assert scores.detected.all() and scores.dice[0] > 0.8 and scores.false_positives == 0


def test_remove_small_components():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[1:5, 1:5, 1:5] = 1  # 64 voxels: d = 4.96 mm
    mask[8, 8, 8] = 1  # 1 voxel: d = 1.24 mm
    kept = remove_small_components(mask, (1.0, 1.0, 1.0), 3.0)
    assert kept.sum() == 64 and kept[8, 8, 8] == 0
    assert equivalent_diameter(64, (1, 1, 1)) > 3.0 > equivalent_diameter(1, (1, 1, 1))


def test_whole_scan_inference_writes_nifti_with_ct_geometry(tmp_path):
    folder = write_dataset(tmp_path / "data", SMALL, patients=1, seed=1, scans_per_patient=(1,))[0]

    def oracle(x):  # "nodule" = bright voxels; logits +-10
        return torch.where(x > 0.6, 10.0, -10.0)

    mask, geometry = segment_series(oracle, folder, tmp_path / "pred.nii.gz")
    hu, _, _ = read_series_dir(folder)
    np.testing.assert_array_equal(mask, (np.clip((hu + 1300) / 1600, 0, 1) * 255).round() / 255 > 0.6)
    np.testing.assert_array_equal(read_nifti(tmp_path / "pred.nii.gz", like=geometry), mask)


def test_datamodule_offline_and_missing_real(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNG_SEG_CACHE", str(tmp_path / "cache"))
    dm = LungCTDataModule(
        image_size=48,
        phantom_patients=4,
        phantom_matrix=48,
        phantom_slices=12,
        phantom_slice_mm=5.0,
        phantom_nodules=3,
        split=(0.5, 0.25, 0.25),
    )
    dm.prepare_data()
    dm.setup("fit")
    image, mask, index = dm.datasets["train"][0]  # the training set returns the index that seeds augmentation
    assert index.item() == 0 and len(dm.datasets["val"][0]) == 2
    assert image.shape == mask.shape == (1, 48, 48) and 0 <= image.min() and image.max() <= 1
    assert mask.sum() > 0  # no empty slices requested
    patients = [{n.split("/")[0] for n in dm.names[k]} for k in ("train", "val", "test")]
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2])
    wrong = LungCTDataModule(
        image_size=64,
        phantom_patients=4,
        phantom_matrix=48,
        phantom_slices=12,
        phantom_slice_mm=5.0,
        phantom_nodules=3,
        split=(0.5, 0.25, 0.25),
    )
    with pytest.raises(ValueError, match="image_size"):
        wrong.setup("fit")
    real = LungCTDataModule(source="real", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match=r"UniToChest.*zenodo"):
        real.prepare_data()


def test_segment_command_writes_the_mask_of_the_checkpoint(tmp_path, monkeypatch):
    import nibabel as nib
    from lung_seg.cli import main
    from lung_seg.inference import predict_volume
    from lung_seg.lightning_module import NoduleSegmenter
    from lung_seg.model import UNet
    from reprokit.cli import package_path

    monkeypatch.setenv("LUNG_SEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    folder = write_dataset(tmp_path / "data", SMALL, patients=1, seed=2, scans_per_patient=(1,))[0]
    # A checkpoint of the contract config's network (3-level U-Net, 4 channels) with random weights.
    torch.manual_seed(0)
    module = NoduleSegmenter(UNet(base_channels=4, depth=3), output_prior=0.5).eval()  # logits near 0: a mixed mask
    torch.save({"state_dict": module.state_dict()}, tmp_path / "m.ckpt")
    config = package_path("lung_seg", "configs") / "cpu" / "contract.yaml"
    args = ["--config", str(config), "--ckpt_path", str(tmp_path / "m.ckpt"), "--series", str(folder)]
    main(["segment", *args, "--out", str(tmp_path / "mask.nii.gz"), "--min_diameter_mm", "0"])
    hu, geometry, _ = read_series_dir(folder)
    image = np.clip(np.rint((hu + 1300) / 1600 * 255), 0, 255).astype(np.uint8)  # window -500/1600, 8 bit
    expect = predict_volume(module, image) > 0.5
    assert 0 < expect.sum() < expect.size  # a non-trivial mask, so the comparison means something
    written = nib.load(tmp_path / "mask.nii.gz")
    np.testing.assert_allclose(written.affine, geometry.affine, atol=1e-5)
    np.testing.assert_array_equal(read_nifti(tmp_path / "mask.nii.gz", like=geometry), expect)
