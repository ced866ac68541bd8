"""LLFF: the poses_bounds.npy reader on a tiny scene written here, the axis convention, recentring, split, NDC rays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from boost_nerf.data import SceneDataModule, split_to_rays
from boost_nerf.experts import make_expert
from boost_nerf.llff import average_pose, holdout_split, llff_to_opengl, ndc_rays, read_llff, recenter_rescale
from boost_nerf.moe import BoostNeRF
from reprokit.data import DatasetNotFoundError

FULL_H, FULL_W, FULL_FOCAL = 24, 32, 30.0


def _opengl_poses(n: int) -> torch.Tensor:
    """Forward-facing cameras [n, 3, 4]: small yaw and shifts around (0, 0, 4), all looking along -z."""
    poses = []
    for i in range(n):
        yaw = 0.05 * math.sin(i)
        rot = torch.tensor(
            [[math.cos(yaw), 0.0, math.sin(yaw)], [0.0, 1.0, 0.0], [-math.sin(yaw), 0.0, math.cos(yaw)]],
            dtype=torch.float64,
        )
        centre = torch.tensor([0.3 * math.cos(i), 0.2 * math.sin(2 * i), 4.0], dtype=torch.float64)
        poses.append(torch.cat([rot, centre[:, None]], 1))
    return torch.stack(poses)


def write_llff(root, n: int = 10, factor: int = 4, small: bool = True) -> torch.Tensor:
    """A tiny LLFF scene: poses_bounds.npy in LLFF's [down, right, back] columns, images/ (and images_<factor>/).

    Image ``i`` is filled with the grey level ``10 * i`` (full size) or ``10 * i + 1`` (downsampled folder), so the
    test can tell which folder was read. Returns the OpenGL poses the file encodes.
    """
    from PIL import Image

    gl = _opengl_poses(n)
    # OpenGL columns [right, up, back] -> LLFF [down, right, back] = [-up, right, back].
    llff = torch.stack([-gl[:, :, 1], gl[:, :, 0], gl[:, :, 2], gl[:, :, 3]], 2)
    hwf = torch.tensor([FULL_H, FULL_W, FULL_FOCAL], dtype=torch.float64).expand(n, 3)[:, :, None]
    bounds = torch.stack([torch.linspace(2.0, 3.0, n), torch.full((n,), 12.0)], 1).double()
    rows = torch.cat([torch.cat([llff, hwf], 2).reshape(n, 15), bounds], 1)
    root.mkdir(parents=True)
    np.save(root / "poses_bounds.npy", rows.numpy())
    (root / "images").mkdir()
    for i in range(n):
        Image.fromarray(np.full((FULL_H, FULL_W, 3), 10 * i, np.uint8)).save(root / "images" / f"IMG_{i:04d}.JPG")
    if small:
        (root / f"images_{factor}").mkdir()
        h, w = FULL_H // factor, FULL_W // factor
        for i in range(n):
            Image.fromarray(np.full((h, w, 3), 10 * i + 1, np.uint8)).save(root / f"images_{factor}" / f"{i:03d}.png")
    return gl


def test_reader_shapes_factor_and_downsampled_folder(tmp_path):
    write_llff(tmp_path / "fern")
    scene = read_llff(tmp_path / "fern", factor=4)
    assert scene.images.shape == (10, 6, 8, 3) and scene.c2w.shape == (10, 4, 4) and scene.bounds.shape == (10, 2)
    assert scene.focal == pytest.approx(FULL_FOCAL / 4)
    grey = scene.images[:, 0, 0, 0] * 255
    torch.testing.assert_close(grey, 10 * torch.arange(10.0) + 1, atol=1e-3, rtol=0)  # images_4/ was read


def test_reader_downsamples_full_images_when_the_folder_is_missing(tmp_path):
    write_llff(tmp_path / "fern", factor=4, small=False)
    scene = read_llff(tmp_path / "fern", factor=4)
    assert scene.images.shape == (10, 6, 8, 3)
    torch.testing.assert_close(scene.images[:, 3, 5, 1] * 255, 10 * torch.arange(10.0), atol=1e-3, rtol=0)
    full = read_llff(tmp_path / "fern", factor=1)
    assert full.images.shape == (10, FULL_H, FULL_W, 3) and full.focal == pytest.approx(FULL_FOCAL)


def test_llff_columns_to_opengl_hand_worked():
    # An OpenGL identity camera written in LLFF's order: down = -y, right = +x, back = +z; centre (1, 2, 3).
    llff = torch.tensor([[[0.0, 1.0, 0.0, 1.0, 9.0], [-1.0, 0.0, 0.0, 2.0, 9.0], [0.0, 0.0, 1.0, 3.0, 9.0]]])
    out = llff_to_opengl(llff)
    assert torch.equal(out[0, :, :3], torch.eye(3))
    assert out[0, :, 3].tolist() == [1.0, 2.0, 3.0] and out[0, :, 4].tolist() == [9.0, 9.0, 9.0]


def test_recentred_poses_keep_the_rig_and_centre_the_average(tmp_path):
    gl = write_llff(tmp_path / "fern")
    scene = read_llff(tmp_path / "fern", factor=4)
    # Rescaled so that the nearest bound (2.0) lands at 1 / 0.75.
    assert float(scene.bounds.min()) == pytest.approx(1 / 0.75, rel=1e-5)
    scale = 1 / (2.0 * 0.75)
    torch.testing.assert_close(average_pose(scene.c2w.double()), torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0)
    # Relative poses are those of the file (rotations exactly, translations scaled): the rig is only moved.
    ref = torch.eye(4, dtype=torch.float64).repeat(10, 1, 1)
    ref[:, :3, :] = gl
    ref[:, :3, 3] *= scale
    rel_ref = torch.linalg.inv(ref[0]) @ ref[3]
    rel_got = torch.linalg.inv(scene.c2w[0].double()) @ scene.c2w[3].double()
    torch.testing.assert_close(rel_got, rel_ref, atol=1e-5, rtol=0)
    # recenter_rescale on its own: the bounds scale like the translations.
    _, bounds = recenter_rescale(gl, torch.tensor([[4.0, 8.0]], dtype=torch.float64).expand(10, 2))
    assert bounds[0].tolist() == pytest.approx([1 / 0.75, 2 / 0.75])


def test_holdout_split_is_every_eighth_image():
    train, test = holdout_split(20)
    assert test.tolist() == [0, 8, 16]
    assert train.tolist() == [i for i in range(20) if i % 8]


def test_ndc_ray_hand_computed():
    """o = (0.3, -0.1, 0.5), d = (0.1, 0.2, -1), W = 4, H = 2, f = 2, near = 1, worked out by hand.

    Shift to the near plane: t = 1.5, o' = (0.45, 0.2, -1). With a_x = -2f/W = -1 and a_y = -2f/H = -2:
    o_ndc = (a_x * 0.45 / -1, a_y * 0.2 / -1, 1 + 2 / -1) = (0.45, 0.4, -1);
    d_ndc = (a_x * (0.1 / -1 - 0.45 / -1), a_y * (0.2 / -1 - 0.2 / -1), -2 / -1) = (-0.35, 0, 2).
    """
    o, d = ndc_rays(torch.tensor([[0.3, -0.1, 0.5]]), torch.tensor([[0.1, 0.2, -1.0]]), 2, 4, 2.0, near=1.0)
    torch.testing.assert_close(o, torch.tensor([[0.45, 0.4, -1.0]]))
    torch.testing.assert_close(d, torch.tensor([[-0.35, 0.0, 2.0]]))


def test_ndc_maps_near_to_minus_one_infinity_to_one_and_keeps_rays_straight():
    """Project world points of each ray into NDC directly; they lie on the NDC ray, t from 0 (near) towards 1 (inf)."""
    gen = torch.Generator().manual_seed(0)
    h, w, f, near = 6, 8, 7.0, 1.0
    origins = torch.randn(20, 3, generator=gen, dtype=torch.float64) * 0.2
    dirs = torch.nn.functional.normalize(
        torch.randn(20, 3, generator=gen, dtype=torch.float64) * 0.3 + torch.tensor([0, 0, -1.0], dtype=torch.float64),
        dim=-1,
    )
    o_ndc, d_ndc = ndc_rays(origins, dirs, h, w, f, near)

    def project(p: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [-2 * f / w * p[..., 0] / p[..., 2], -2 * f / h * p[..., 1] / p[..., 2], 1 + 2 * near / p[..., 2]], -1
        )

    assert torch.allclose(o_ndc[:, 2], torch.full((20,), -1.0, dtype=torch.float64))  # depth near -> -1
    torch.testing.assert_close(o_ndc + d_ndc, project(origins + 1e9 * dirs), atol=1e-6, rtol=0)  # infinity -> t = 1
    assert torch.allclose((o_ndc + d_ndc)[:, 2], torch.ones(20, dtype=torch.float64))
    last_t = torch.zeros(20, dtype=torch.float64)
    for s in (2.0, 5.0, 50.0):
        p = project(origins + s * dirs)
        t = (p[:, 2] - o_ndc[:, 2]) / d_ndc[:, 2]
        torch.testing.assert_close(p, o_ndc + t[:, None] * d_ndc, atol=1e-9, rtol=0)  # on the NDC ray
        assert ((t > last_t) & (t < 1)).all()
        last_t = t


def test_datamodule_llff_rays_in_ndc_with_world_viewdirs(tmp_path):
    write_llff(tmp_path / "fern")
    dm = SceneDataModule(source="llff", data_dir=str(tmp_path / "fern"), image_size=None, llff_factor=4)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 8 * 6 * 8  # images 0 and 8 are held out
    assert len(dm.val_set) == 2
    rays = dm.train_set.rays
    assert set(rays) == {"origins", "dirs", "viewdirs", "rgb"}
    torch.testing.assert_close(rays["origins"][:, 2], torch.full((len(dm.train_set),), -1.0))  # on the near plane
    torch.testing.assert_close(rays["dirs"].norm(dim=-1), torch.ones(len(dm.train_set)))
    assert (rays["viewdirs"][:, 2] < 0).all()  # forward-facing: every ray looks down -z
    scene = dm.read_split("test")
    assert scene.names == ["000.png", "008.png"]
    raw = split_to_rays(scene, background=0.0)
    # The world ray (camera centre + s * viewdir) projected into NDC lies on the stored NDC ray.
    centre = scene.c2w[:, None, None, :3, 3].expand_as(raw["viewdirs"]).double()
    world = centre + 7.0 * raw["viewdirs"].double()
    h, w, f = scene.height, scene.width, scene.focal
    ndc = torch.stack(
        [-2 * f / w * world[..., 0] / world[..., 2], -2 * f / h * world[..., 1] / world[..., 2], 1 + 2 / world[..., 2]],
        -1,
    )
    t = (ndc - raw["origins"].double()).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(ndc, raw["origins"].double() + t * raw["dirs"].double(), atol=1e-5, rtol=0)


def test_llff_rays_render_in_the_ndc_box_with_no_background(tmp_path):
    write_llff(tmp_path / "fern", n=3)
    dm = SceneDataModule(source="llff", data_dir=str(tmp_path / "fern"), image_size=None, llff_factor=4)
    dm.setup("test")
    aabb = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)
    torch.manual_seed(0)
    model = BoostNeRF(
        [make_expert("dvgo", 8, aabb, feature_dim=4, mlp_width=8)], None, "single", 1, aabb, background=0.0
    )
    view = dm.test_set[0]
    out = model.render_image(view["origins"], view["dirs"], viewdirs=view["viewdirs"])
    assert out["rgb"].shape == (6, 8, 3) and int(out["points"]) > 0
    with torch.no_grad():
        model.occupancy.zero_()
    out = model.render_image(view["origins"], view["dirs"], viewdirs=view["viewdirs"])
    assert torch.equal(out["rgb"], torch.zeros(6, 8, 3))  # empty scene: black, no background colour added


def test_missing_llff_scene_and_bad_image_size(tmp_path):
    dm = SceneDataModule(source="llff", data_dir=str(tmp_path / "nope"), image_size=None)
    with pytest.raises(DatasetNotFoundError, match="LLFF"):
        dm.prepare_data()
    with pytest.raises(ValueError, match="image_size"):
        SceneDataModule(source="llff", data_dir=str(tmp_path), image_size=32)


def test_reproduce_paper_scale_recognises_an_llff_root(tmp_path, monkeypatch):
    """--data_dir nerf_llff_data/ runs the LLFF protocol: llff_* configs, Top-2 only, results boost_table_llff."""
    from boost_nerf import reproduce

    root = tmp_path / "nerf_llff_data"
    for scene in reproduce.LLFF_SCENES:
        (root / scene).mkdir(parents=True)
        (root / scene / "poses_bounds.npy").write_bytes(b"")
    calls = []

    def fake_backbone(backbone, scale, quick, out, data_dir, seed, dataset="offline"):
        calls.append((backbone, data_dir.name, dataset))
        modes = reproduce.DATASET_MODES[dataset]
        metrics = {f"{backbone}.{m}.psnr": 20.0 for m in ("baseline", *modes)}
        return [], metrics, {}

    monkeypatch.setattr(reproduce, "run_backbone", fake_backbone)
    monkeypatch.setattr(reproduce, "_figures", lambda *a, **k: None)
    written = []
    monkeypatch.setattr(reproduce, "_write_table", lambda name, *a, **k: written.append(name))
    monkeypatch.setattr(reproduce, "print_check", lambda *a, **k: None)
    reproduce.run("paper", False, tmp_path / "out", data_dir=root)
    assert {c[2] for c in calls} == {"llff"} and {c[1] for c in calls} == set(reproduce.LLFF_SCENES)
    assert len(calls) == 3 * 8 and set(written) == {"boost_table_llff"}
    assert reproduce.DATASET_MODES["llff"] == ("top2",)
    for backbone in ("dvgo", "tensorf", "ngp"):  # the configs the protocol will read exist
        pkg = reproduce.package_path("boost_nerf", "configs") / "paper"
        assert (pkg / f"llff_{backbone}_top2.yaml").is_file()
        assert all((pkg / f"llff_{backbone}_expert{r}.yaml").is_file() for r in (128, 160, 200, 256, 300, 350))


def test_training_steps_on_llff_use_ndc_rays_and_world_viewdirs(tmp_path):
    """Lightning fit + validation on the tiny LLFF scene; the colour MLP sees world directions, not NDC ones."""
    import pytorch_lightning as pl
    from boost_nerf.lightning_module import BoostNeRFModule

    write_llff(tmp_path / "fern", n=9)
    dm = SceneDataModule(source="llff", data_dir=str(tmp_path / "fern"), image_size=None, llff_factor=4, batch_size=128)
    torch.manual_seed(0)
    module = BoostNeRFModule(
        expert_resolutions=[8],
        expert_kwargs={"feature_dim": 4, "mlp_width": 8},
        aabb=[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0],
        background=0.0,
        occupancy_resolution=8,
        occupancy_every=0,
    )
    seen = []
    module.model.experts[0].register_forward_pre_hook(lambda mod, args: seen.append(args[1].detach().clone()))
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
    )
    trainer.fit(module, dm)
    assert trainer.global_step == 6
    # The directions fed to the expert are world-space viewdirs (all looking down -z), not the unit NDC directions
    # (whose z component is positive: NDC z runs from -1 at the near plane to +1 at infinity).
    dirs = torch.cat(seen)
    assert (dirs[:, 2] < 0).all()
    assert torch.isfinite(torch.tensor(trainer.callback_metrics["val/psnr"].item()))
