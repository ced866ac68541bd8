"""The Lightning wiring's level assignment on a real (tiny) model, and the COLMAP / Blender camera conventions."""

import math

import numpy as np
import pytest
import torch
from gode.colmap import read_colmap
from gode.data import intrinsics, viewmats_from_blender
from gode.levels import level_mask
from gode.lightning_module import GoDeModule
from scipy.spatial.transform import Rotation


class _Trainer:
    def __init__(self, views):
        self.datamodule = type("DM", (), {"train_set": views})()


def test_module_assigns_nested_levels_from_gradients():
    torch.manual_seed(0)
    module = GoDeModule(num_gaussians=120, sh_degree=1, num_levels=3, min_level_size=15, max_fraction=0.75)
    module.scene_scale = 1.0
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0
    view = {"image": torch.rand(16, 16, 3), "viewmat": viewmat, "K": intrinsics(20.0, 16, 16)}
    module._views_for_importance = lambda: [view]  # the trainer's dataset, without a trainer
    module.assign_levels()
    counts = module.level_counts()
    assert counts == [15, 37, 90] and module.lod_active  # 15 * sqrt(90 / 15) = 36.7
    for lvl in (1, 2):
        assert (level_mask(module.level_of, lvl - 1) <= level_mask(module.level_of, lvl)).all()
    # Gaussians nobody sees (zero gradient) are the ones pruned first.
    out = module.render({**view, "image": view["image"][None]})
    assert out.rgb.shape == (16, 16, 3)
    # Fade-in: level 2 with its enhancement set at zero opacity renders exactly as level 1, at full opacity as level 2.
    with torch.no_grad():
        module.gaussians.opacity_logits.fill_(2.0)  # opaque enough that level 2 visibly differs from level 1
        batch = {**view, "image": view["image"][None]}
        lvl1, lvl2 = module.render(batch, 1).rgb, module.render(batch, 2).rgb
        assert (lvl2 - lvl1).abs().max() > 1e-3
        torch.testing.assert_close(module.render(batch, 2, fade=0.0).rgb, lvl1, rtol=0, atol=1e-6)
        torch.testing.assert_close(module.render(batch, 2, fade=1.0).rgb, lvl2, rtol=0, atol=0)
        half = module.render(batch, 2, fade=0.5).rgb
        assert 0 < (half - lvl1).abs().max() < (lvl2 - lvl1).abs().max() + 1e-6


def test_blender_to_opencv_viewmat():
    # A Blender (OpenGL) camera at +z looking down -z at the origin: the origin is 4 units in front (+z in OpenCV).
    c2w = torch.eye(4)
    c2w[2, 3] = 4.0
    viewmat = viewmats_from_blender(c2w[None])[0]
    p = viewmat @ torch.tensor([0.0, 0.0, 0.0, 1.0])
    torch.testing.assert_close(p[:3], torch.tensor([0.0, 0.0, 4.0]))
    # world +y (up in the image for this camera) maps to camera -y (OpenCV y points down)
    q = viewmat @ torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert q[1] < 0


def test_colmap_text_reader(tmp_path):
    sparse = tmp_path / "sparse" / "0"
    sparse.mkdir(parents=True)
    rot = Rotation.from_euler("xyz", [0.1, -0.4, 0.25])
    x, y, z, w = rot.as_quat()
    (sparse / "cameras.txt").write_text("# comment\n1 PINHOLE 100 80 90.0 91.0 50.0 40.0\n")
    (sparse / "images.txt").write_text(
        f"# header\n2 {w} {x} {y} {z} 0.5 -0.2 3.0 1 b.png\n10 20 -1\n1 1 0 0 0 0 0 1 1 a.png\n\n"
    )
    (sparse / "points3D.txt").write_text("1 0.1 0.2 0.3 255 0 128 0.5 2 0\n2 -1 0 1 0 255 0 0.1\n")
    model = read_colmap(sparse)
    assert model.names == ["a.png", "b.png"]
    expected = torch.eye(4)
    expected[2, 3] = 1.0
    torch.testing.assert_close(model.viewmats[0], expected)
    np.testing.assert_allclose(model.viewmats[1][:3, :3].numpy(), rot.as_matrix(), atol=1e-6)
    np.testing.assert_allclose(model.viewmats[1][:3, 3].numpy(), [0.5, -0.2, 3.0], atol=1e-6)
    torch.testing.assert_close(model.Ks[0], torch.tensor([[90.0, 0, 50], [0, 91.0, 40], [0, 0, 1]]))
    torch.testing.assert_close(model.points, torch.tensor([[0.1, 0.2, 0.3], [-1.0, 0, 1]]))
    torch.testing.assert_close(model.colors[0], torch.tensor([1.0, 0.0, 128 / 255]))
    assert math.isclose(model.sizes[0][0], 100)


def test_lpips_is_nan_offline_without_weights(monkeypatch, tmp_path):
    from gode.metrics import lpips

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache: no VGG weights
    assert math.isnan(lpips(torch.rand(16, 16, 3), torch.rand(16, 16, 3)))


def _leveled_module() -> tuple[GoDeModule, dict]:
    torch.manual_seed(0)
    module = GoDeModule(num_gaussians=60, sh_degree=1, num_levels=3, min_level_size=10, max_fraction=0.75)
    module.scene_scale = 1.0
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0
    view = {"image": torch.rand(16, 16, 3), "viewmat": viewmat, "K": intrinsics(20.0, 16, 16)}
    module._views_for_importance = lambda: [view]
    module.assign_levels()
    with torch.no_grad():
        module.gaussians.shN.normal_()  # nonzero view-dependent colour, so the SH-rest L1 has a gradient
    return module, {**view, "image": view["image"][None]}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log:UserWarning")  # a bare step, no Trainer to log to
def test_lod_step_regularises_only_the_sampled_levels_sh(monkeypatch):
    import gode.lightning_module as lm
    from gode.metrics import photometric_loss

    module, batch = _leveled_module()
    monkeypatch.setattr(lm, "sample_level", lambda *args: 0)
    module.training_step(batch, 0).backward()
    got = module.gaussians.shN.grad.clone()
    inside = level_mask(module.level_of, 0)
    # Gaussians outside the sampled level are neither rendered nor regularised this step.
    assert inside.sum() == 10 and got[~inside].abs().max() == 0
    # Inside: the photometric gradient plus 0.05 * sign / (number of the level's SH-rest entries), computed apart.
    module.gaussians.shN.grad = None
    out = module.render_params(module.splats(0, quantize=True), batch, sh_degree=0)
    photometric_loss(out.rgb, batch["image"][0], 0.2).backward()
    shn = module.gaussians.shN.detach()[inside]
    expected = module.gaussians.shN.grad[inside] + 0.05 * torch.sign(shn) / shn.numel()
    torch.testing.assert_close(got[inside], expected)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step:UserWarning")  # the schedule alone is stepped
def test_lod_restart_resets_adam_and_the_centres_rate():
    from gode.lightning_module import MeansSchedule

    module, _ = _leveled_module()
    params = list(module.gaussians.raw().values())
    optimizer = torch.optim.Adam([{"params": [p]} for p in params], lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    schedule = MeansSchedule(total=10, final_ratio=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [schedule] + [lambda s: 1.0] * 5)
    for _ in range(12):
        scheduler.step()
    assert math.isclose(optimizer.param_groups[0]["lr"], 0.001, rel_tol=1e-9)  # decayed to 0.01 x 0.1
    module.hparams.schedule_steps = 20
    trainer = type("T", (), {"global_step": 12})()
    module._trainer = trainer
    module.optimizers = lambda: optimizer
    module.lr_schedulers = lambda: scheduler
    module._restart_for_lod()
    assert len(optimizer.state) == 0  # fresh moments and step counts
    assert math.isclose(optimizer.param_groups[0]["lr"], 0.1, rel_tol=1e-9)
    for _ in range(10):  # half of the restarted 20-step decay: 0.1 * 0.01 ** 0.5
        scheduler.step()
    assert math.isclose(optimizer.param_groups[0]["lr"], 0.01, rel_tol=1e-9)


def test_opacity_criterion_keeps_the_most_opaque_gaussians_per_level():
    torch.manual_seed(1)
    module = GoDeModule(
        num_gaussians=40, sh_degree=0, num_levels=3, min_level_size=5, max_fraction=0.75, level_criterion="opacity"
    )
    logits = torch.randn(40)
    with torch.no_grad():
        module.gaussians.opacity_logits.copy_(logits)
    module._views_for_importance = lambda: pytest.fail("the opacity ranking must not render any view")
    module.assign_levels()
    assert module.level_counts() == [5, 12, 30]  # 5 * sqrt(30 / 5) = 12.2
    # Reference: sort the opacities by hand (distinct values, so no ties); level l is the top |G_l| of them.
    order = sorted(range(40), key=lambda i: -float(logits[i]))
    for level, size in enumerate((5, 12, 30)):
        assert set(level_mask(module.level_of, level).nonzero().flatten().tolist()) == set(order[:size])
    assert set((module.level_of == -1).nonzero().flatten().tolist()) == set(order[30:])


def test_random_criterion_nests_reproducibly_and_ignores_opacity():
    def levels(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        module = GoDeModule(
            num_gaussians=200, sh_degree=0, num_levels=4, min_level_size=10, max_fraction=0.75, level_criterion="random"
        )
        with torch.no_grad():
            module.gaussians.opacity_logits.copy_(torch.linspace(-3, 3, 200))  # opacity rises with the index
        module._views_for_importance = lambda: pytest.fail("the random ranking must not render any view")
        module.assign_levels()
        return module.level_of.clone(), module.level_counts()

    level_of, counts = levels(0)
    assert counts == [10, 25, 61, 150]
    for lvl in (1, 2, 3):
        assert (level_mask(level_of, lvl - 1) <= level_mask(level_of, lvl)).all()
    assert torch.equal(levels(0)[0], level_of)  # same seed, same order
    assert not torch.equal(levels(1)[0], level_of)
    # Not the opacity ranking, which would prune exactly the 50 least opaque (indices 0..49): a uniform draw keeps
    # 150 / 200 of them, 37.5 on average (hypergeometric standard deviation 2.7).
    kept_low = int((level_of[:50] >= 0).sum())
    assert 25 <= kept_low <= 49


def test_unknown_level_criterion_is_rejected():
    with pytest.raises(ValueError, match="level_criterion"):
        GoDeModule(num_gaussians=10, num_levels=2, min_level_size=2, level_criterion="size")
