"""reprokit.scenes: cameras, the analytic ray caster and the Blender-format round trip."""

from __future__ import annotations

import json
import math

import pytest
import torch
from reprokit.scenes import (
    ProceduralScene,
    Shape,
    camera_rays,
    focal_from_angle,
    generate_blender_scene,
    hemisphere_poses,
    look_at,
    orbit_poses,
    read_blender_split,
    write_blender_split,
)


def test_look_at_is_a_rotation_facing_the_target():
    eye = torch.tensor([[3.0, -1.0, 2.0], [0.5, 4.0, 1.0]])
    c2w = look_at(eye).double()
    rot = c2w[:, :3, :3]
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3, dtype=torch.float64).expand(2, 3, 3), atol=1e-6)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(2, dtype=torch.float64), atol=1e-6)
    forward = -rot[:, :, 2]  # OpenGL cameras look down -z
    assert torch.allclose(forward, -eye.double() / eye.double().norm(dim=-1, keepdim=True), atol=1e-6)
    assert (rot[:, 2, 1] > 0).all()  # camera up has a positive world-z component


def test_camera_rays_project_back_to_their_pixels():
    c2w = look_at(torch.tensor([[2.0, 3.0, 1.5]]))
    h, w, focal = 6, 8, 7.0
    origins, dirs = camera_rays(h, w, focal, c2w)
    # Project a point on each ray with an independently written pinhole model (w2c = inverse of c2w).
    points = origins + 2.5 * dirs
    w2c = torch.linalg.inv(c2w[0].double())
    cam = (points[0].double() @ w2c[:3, :3].T) + w2c[:3, 3]
    col = focal * cam[..., 0] / -cam[..., 2] + w / 2
    row = -focal * cam[..., 1] / -cam[..., 2] + h / 2
    rows, cols = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    assert torch.allclose(row, rows.double(), atol=1e-4) and torch.allclose(col, cols.double(), atol=1e-4)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(1, h, w), atol=1e-6)


def test_sphere_hit_distance_matches_closed_form():
    scene = ProceduralScene((Shape("sphere", (0.2, -0.1, 0.3), (0.5,), (1.0, 0.0, 0.0)),))
    origin = torch.tensor([[3.0, 1.0, -2.0]])
    to_center = torch.tensor([[0.2, -0.1, 0.3]]) - origin
    _, alpha, depth = scene.cast(origin, to_center / to_center.norm())
    assert alpha.item() == 1.0
    assert depth.item() == pytest.approx(to_center.norm().item() - 0.5, abs=1e-5)
    # A ray passing 0.51 from the centre misses.
    perp = torch.linalg.cross(to_center, torch.tensor([[0.0, 0.0, 1.0]]))
    offset_origin = origin + 0.51 * perp / perp.norm()
    _, alpha, depth = scene.cast(offset_origin, to_center / to_center.norm())
    assert alpha.item() == 0.0 and math.isinf(depth.item())


@pytest.mark.parametrize("kind", ["sphere", "box", "cylinder"])
def test_first_hit_lies_on_the_surface_of_the_occupied_set(kind):
    size = {"sphere": (0.6,), "box": (0.5, 0.3, 0.4), "cylinder": (0.35, 0.5)}[kind]
    scene = ProceduralScene((Shape(kind, (0.1, 0.0, -0.1), size, (0.2, 0.8, 0.3)),))
    gen = torch.Generator().manual_seed(0)
    origins = torch.nn.functional.normalize(torch.randn(4000, 3, generator=gen), dim=-1) * 3.0
    targets = (torch.rand(4000, 3, generator=gen) - 0.5) * 1.6
    dirs = torch.nn.functional.normalize(targets - origins, dim=-1)
    _, alpha, depth = scene.cast(origins, dirs)
    hit = alpha.bool()
    assert 0.1 < hit.float().mean() < 0.95
    eps = 1e-3
    before = origins[hit] + (depth[hit] - eps)[:, None] * dirs[hit]
    after = origins[hit] + (depth[hit] + eps)[:, None] * dirs[hit]
    assert not scene.occupancy(before).any()
    # Grazing rays may exit within eps; almost all step inside.
    assert scene.occupancy(after).float().mean() > 0.98
    # Rays that miss never pass through the occupied set (dense march along them).
    t = torch.linspace(0.0, 6.0, 600)
    missed = origins[~hit][:, None] + t[None, :, None] * dirs[~hit][:, None]
    assert not scene.occupancy(missed).any()


def test_write_read_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(3, 5, 7, 4, generator=gen)
    c2w = orbit_poses(3, 4.0, 20.0)
    write_blender_split(tmp_path, "val", images, c2w, 0.7)
    split = read_blender_split(tmp_path, "val")
    assert split.images.shape == (3, 5, 7, 4)
    assert (split.images - images).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(split.c2w, c2w)
    assert split.camera_angle_x == 0.7
    assert split.focal == pytest.approx(0.5 * 7 / math.tan(0.35))
    white = split.rgb(1.0)
    expected = split.images[..., :3] * split.images[..., 3:] + (1 - split.images[..., 3:])
    assert torch.allclose(white, expected)


def test_generated_scene_is_blender_format_deterministic_and_cached(tmp_path):
    kwargs = dict(image_size=16, n_train=12, n_val=2, n_test=3, seed=3, supersample=1)
    a = generate_blender_scene(tmp_path / "a", **kwargs)
    b = generate_blender_scene(tmp_path / "b", **kwargs)
    for split, n in (("train", 12), ("val", 2), ("test", 3)):
        meta = json.loads((a / f"transforms_{split}.json").read_text())
        assert len(meta["frames"]) == n and "camera_angle_x" in meta
        sa, sb = read_blender_split(a, split), read_blender_split(b, split)
        assert torch.equal(sa.images, sb.images) and torch.equal(sa.c2w, sb.c2w)
    train = read_blender_split(a, "train")
    # The PNGs hold what the ray caster sees through the recorded cameras.
    scene = ProceduralScene.from_seed(3)
    o, d = camera_rays(16, 16, focal_from_angle(16, train.camera_angle_x), train.c2w)
    _, alpha, _ = scene.cast(o, d)
    assert torch.equal(train.images[..., 3], alpha)
    assert 0.02 < alpha.mean() < 0.8
    stamp = (a / "train" / "r_0.png").stat().st_mtime_ns
    assert generate_blender_scene(a, **kwargs) == a
    assert (a / "train" / "r_0.png").stat().st_mtime_ns == stamp  # cache hit: nothing rewritten
    other = read_blender_split(generate_blender_scene(tmp_path / "c", **{**kwargs, "seed": 4}), "train")
    assert not torch.equal(other.images, train.images)


def test_hemisphere_cameras_cover_the_upper_hemisphere():
    c2w = hemisphere_poses(200, 4.0, seed=0)
    eye = c2w[:, :3, 3]
    assert torch.allclose(eye.norm(dim=-1), torch.full((200,), 4.0), atol=1e-5)
    assert (eye[:, 2] > 0).all()
    azimuth = torch.atan2(eye[:, 1], eye[:, 0])
    counts = torch.histc(azimuth, bins=4, min=-math.pi, max=math.pi)
    assert counts.min() > 30  # every quadrant is seen
