"""Data: the NSVF reader against the Blender reader on the same views, ray batches, and missing-data errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from boost_nerf.data import RayDataset, SceneDataModule, read_nsvf_split, split_to_rays
from reprokit.data import DatasetNotFoundError
from reprokit.scenes import generate_blender_scene, read_blender_split


def test_nsvf_reader_matches_blender_reader_on_the_same_views(tmp_path):
    from PIL import Image

    root = generate_blender_scene(tmp_path / "scene", image_size=12, n_train=3, n_val=1, n_test=2, supersample=1)
    blender = read_blender_split(root, "test")
    nsvf = tmp_path / "nsvf"
    (nsvf / "pose").mkdir(parents=True)
    (nsvf / "rgb").mkdir()
    (nsvf / "intrinsics.txt").write_text(f"{blender.focal} 6 6 0\n0 0 0\n0\n1\n12 12\n")
    opencv = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))  # OpenGL camera -> OpenCV camera (y down, z forward)
    for i in range(2):
        np.savetxt(nsvf / "pose" / f"2_{i:04d}.txt", (blender.c2w[i].double() @ opencv.double()).numpy())
        Image.fromarray((blender.images[i] * 255).round().byte().numpy(), mode="RGBA").save(
            nsvf / "rgb" / f"2_{i:04d}.png"
        )
    split = read_nsvf_split(nsvf, "test")
    assert torch.allclose(split.c2w, blender.c2w, atol=1e-6)
    assert torch.equal(split.images, blender.images)
    assert split.focal == pytest.approx(blender.focal, rel=1e-6)


def test_ray_batches_gather_the_same_rays_as_single_items(tmp_path):
    root = generate_blender_scene(tmp_path / "scene", image_size=8, n_train=2, n_val=1, n_test=1, supersample=1)
    rays = split_to_rays(read_blender_split(root, "train"), background=1.0)
    ds = RayDataset(rays)
    assert len(ds) == 2 * 8 * 8
    batch = ds.__getitems__([5, 70, 3])
    for j, i in enumerate([5, 70, 3]):
        for key in ("origins", "dirs", "rgb"):
            assert torch.equal(batch[key][j], ds[i][key])
    assert torch.allclose(batch["dirs"].norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize("source", ["blender", "nsvf"])
def test_missing_real_data_fails_in_prepare_and_setup_not_init(tmp_path, source):
    dm = SceneDataModule(source=source, data_dir=str(tmp_path / "nope"))
    for call in (dm.prepare_data, lambda: dm.setup("fit")):
        with pytest.raises(DatasetNotFoundError, match="not found"):
            call()
