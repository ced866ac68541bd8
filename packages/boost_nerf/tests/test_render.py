"""Sampler and compositing against analytic transmittance; the rendering model end to end on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch
from boost_nerf.experts import make_expert
from boost_nerf.gate import NeRFGate
from boost_nerf.moe import BoostNeRF
from boost_nerf.render import composite, occupancy_lookup, ray_aabb, sample_along_rays
from reprokit.devices import cuda_kernels_available

AABB = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])


def _slab_rays(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.tensor([1.0, 0.0, 0.0]) + 0.3 * torch.randn(n, 3, generator=gen), dim=-1)
    origins = torch.tensor([-3.0, 0.0, 0.0]) - 0.2 * torch.randn(n, 3, generator=gen).clamp(-1, 1) * torch.tensor(
        [0.0, 1.0, 1.0]
    )
    return origins, dirs


def test_ray_aabb_against_brute_force_march():
    origins, dirs = _slab_rays(200)
    t_near, t_far = ray_aabb(origins, dirs, AABB)
    t = torch.linspace(0, 8, 8001)
    inside = ((origins[:, None] + t[None, :, None] * dirs[:, None]).abs() <= 1).all(-1)
    for r in range(200):
        ts = t[inside[r]]
        if len(ts) == 0:
            assert t_far[r] < t_near[r] + 1e-3
        else:
            assert t_near[r].item() == pytest.approx(ts.min().item(), abs=2e-3)
            assert t_far[r].item() == pytest.approx(ts.max().item(), abs=2e-3)


def test_constant_density_slab_matches_analytic_transmittance():
    """Density sigma in the slab x in [-0.3, 0.5]: opacity 1 - exp(-sigma * L / |d_x|), colour c on a white bg."""
    sigma, color = 2.0, torch.tensor([0.2, 0.6, 0.4])
    origins, dirs = _slab_rays(64)
    step = 0.002
    t, valid = sample_along_rays(origins, dirs, AABB, step)
    x = origins[:, None, :] + t[..., None] * dirs[:, None, :]
    in_slab = valid & (x[..., 0] >= -0.3) & (x[..., 0] <= 0.5) & (x.abs() <= 1).all(-1)
    alphas = torch.where(in_slab, 1 - math.exp(-sigma * step), 0.0)
    rgb, opacity, _ = composite(alphas, color.expand(*alphas.shape, 3), 1.0)
    # rays that cross the slab fully inside the box
    full = (
        origins[:, None] + ((torch.tensor([-0.3, 0.5]) - origins[:, :1]) / dirs[:, :1])[..., None] * dirs[:, None]
    ).abs()
    crosses = (full[..., 1:] <= 1).all(-1).all(-1)
    assert crosses.sum() > 20
    expected = 1 - torch.exp(-sigma * 0.8 / dirs[:, 0])
    torch.testing.assert_close(opacity[crosses], expected[crosses], atol=2 * sigma * step, rtol=0)
    torch.testing.assert_close(rgb, color * opacity[:, None] + (1 - opacity[:, None]))


def test_composite_matches_float64_loop():
    gen = torch.Generator().manual_seed(0)
    alphas = torch.rand(7, 13, generator=gen) ** 3
    rgbs = torch.rand(7, 13, 3, generator=gen)
    rgb, opacity, weights = composite(alphas, rgbs, torch.tensor([0.1, 0.5, 0.9]))
    for r in range(7):
        trans, acc, acc_rgb = 1.0, 0.0, torch.zeros(3, dtype=torch.float64)
        for s in range(13):
            w = trans * float(alphas[r, s])
            assert weights[r, s].item() == pytest.approx(w, abs=1e-6)
            acc += w
            acc_rgb += w * rgbs[r, s].double()
            trans *= 1 - float(alphas[r, s])
        assert opacity[r].item() == pytest.approx(acc, abs=1e-6)
        ref = acc_rgb + (1 - acc) * torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
        torch.testing.assert_close(rgb[r].double(), ref, atol=1e-6, rtol=0)


def test_occupancy_lookup_cells():
    occ = torch.zeros(4, 4, 4, dtype=torch.bool)
    occ[3, 0, 1] = True  # x in [0.5, 1], y in [-1, -0.5], z in [-0.5, 0]
    pts = torch.tensor([[0.7, -0.8, -0.2], [0.7, -0.8, 0.2], [-0.7, -0.8, -0.2], [1.0, -1.0, -0.5]])
    assert occupancy_lookup(pts, occ, AABB).tolist() == [True, False, False, True]


def _tiny_model(mode: str, k: int = 2) -> BoostNeRF:
    torch.manual_seed(0)
    experts = [make_expert("dvgo", r, tuple(AABB.tolist()), feature_dim=4, mlp_width=8) for r in (8, 12)]
    if mode == "single":
        experts = experts[1:]
    gate = None if mode == "single" else NeRFGate(len(experts), 6, tuple(AABB.tolist()), 4, 8)
    return BoostNeRF(experts, gate, mode, k, tuple(AABB.tolist()), step_ratio=0.5, occupancy_resolution=8)


@pytest.mark.parametrize("mode", ["single", "topk", "ensemble"])
def test_render_rays_shapes_and_empty_space(mode):
    model = _tiny_model(mode)
    origins, dirs = _slab_rays(32)
    out = model.render_rays(origins, dirs)
    assert out["rgb"].shape == (32, 3) and out["opacity"].shape == (32,)
    assert ((out["opacity"] >= 0) & (out["opacity"] <= 1)).all()
    expected_m = 1 if mode == "single" else 2
    assert out["counts"].shape == (expected_m,)
    with torch.no_grad():  # a grid that says "all empty" leaves only the white background
        model.occupancy.zero_()
    out = model.render_rays(origins, dirs)
    assert torch.equal(out["rgb"], torch.ones(32, 3)) and out["points"] == 0


def test_update_occupancy_follows_the_finest_density():
    model = _tiny_model("topk")
    with torch.no_grad():
        model.experts[1].density_grid.fill_(-30.0)  # alpha ~ 0 everywhere
        model.experts[1].density_grid[..., :6] = 10.0  # x < 0 (the first half along the width axis)
    share = model.update_occupancy()
    assert share == pytest.approx(0.5, abs=0.07)
    assert model.occupancy[:3].all() and not model.occupancy[5:].any()


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_kernels_available(), reason="needs CUDA kernels")
def test_nerfacc_estimator_path_matches_cpu_sampler():
    """nerfacc's OccGridEstimator + packed rendering gives the CPU path's opacity on the constant-density slab."""
    import nerfacc

    sigma = 2.0
    device = torch.device("cuda")
    origins, dirs = (v.to(device) for v in _slab_rays(256))
    step = 0.002

    def sigma_fn(t_starts, t_ends, ray_indices):
        x = origins[ray_indices] + ((t_starts + t_ends) / 2)[:, None] * dirs[ray_indices]
        return torch.where((x[:, 0] >= -0.3) & (x[:, 0] <= 0.5), sigma, 0.0)

    estimator = nerfacc.OccGridEstimator(AABB.to(device), resolution=32).to(device)
    estimator.binaries.fill_(True)
    ray_indices, t_starts, t_ends = estimator.sampling(origins, dirs, sigma_fn=None, render_step_size=step)
    sig = sigma_fn(t_starts, t_ends, ray_indices)
    weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sig, ray_indices=ray_indices, n_rays=256)
    gpu_opacity = nerfacc.accumulate_along_rays(weights, None, ray_indices=ray_indices, n_rays=256)[:, 0]
    t, valid = sample_along_rays(origins, dirs, AABB.to(device), step)
    x = origins[:, None, :] + t[..., None] * dirs[:, None, :]
    alphas = torch.where(valid & (x[..., 0] >= -0.3) & (x[..., 0] <= 0.5), 1 - math.exp(-sigma * step), 0.0)
    _, cpu_opacity, _ = composite(alphas, torch.zeros(*alphas.shape, 3, device=device), 1.0)
    torch.testing.assert_close(gpu_opacity, cpu_opacity, atol=4 * sigma * step, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_kernels_available(), reason="needs CUDA kernels")
def test_model_renders_alike_on_the_estimator_and_cpu_paths():
    """The same mixture rendered through nerfacc's packed GPU path and the CPU sampler (sample offsets differ)."""
    model = _tiny_model("topk")
    with torch.no_grad():
        for expert in model.experts:
            expert.density_grid.copy_(
                torch.linspace(-8, 6, expert.resolution).view(1, 1, -1, 1, 1).expand_as(expert.density_grid)
            )
    model.update_occupancy()
    origins, dirs = _slab_rays(128)
    cpu = model.render_rays(origins, dirs)
    gpu = model.cuda().render_rays(origins.cuda(), dirs.cuda())
    assert (gpu["opacity"].cpu() - cpu["opacity"]).abs().mean() < 0.03
    assert (gpu["rgb"].cpu() - cpu["rgb"]).abs().mean() < 0.03


def test_single_ngp_training_pass_filters_with_one_forward_like_filter_then_evaluate():
    """The fused training path (one forward on all candidates) equals the density filter + forward on kept points."""
    torch.manual_seed(0)
    expert = make_expert("ngp", 12, tuple(AABB.tolist()), levels=3, log2_table_size=8, base_resolution=4, mlp_width=16)
    with torch.no_grad():
        expert.tables.normal_(0, 1.0)
        expert.density_net[-1].bias[0] = 6.0  # dense enough that the weight filter drops points behind surfaces
    model = BoostNeRF([expert], None, "single", 1, tuple(AABB.tolist()))
    assert expert.density_shares_forward
    origins, dirs = _slab_rays(64)
    jitter = torch.rand(64, generator=torch.Generator().manual_seed(3))
    results = {}
    for fused in (True, False):
        expert.density_shares_forward = fused  # instance attribute: False takes the filter-then-evaluate branch
        expert.zero_grad()
        out = model.render_rays(origins, dirs, jitter)
        out["rgb"].square().sum().backward()
        results[fused] = (out, [p.grad.clone() for p in expert.parameters()])
    (new, new_grads), (old, old_grads) = results[True], results[False]
    assert 0 < int(old["points"]) < int(old["candidates"])  # the filter drops some candidates
    assert int(new["points"]) == int(old["points"]) and new["counts"].tolist() == old["counts"].tolist()
    assert torch.allclose(new["rgb"], old["rgb"], rtol=1e-6, atol=1e-7)
    assert torch.allclose(new["opacity"], old["opacity"], rtol=1e-6, atol=1e-7)
    for g_new, g_old in zip(new_grads, old_grads, strict=True):
        assert torch.allclose(g_new, g_old, rtol=1e-5, atol=1e-8)


def test_renormalised_top1_render_equals_the_single_chosen_expert():
    # A gate that sends every point to the finest expert, unsure (p = 0.5): renormalised Top-1 must render exactly
    # what that expert renders alone (same filter, since the filter uses the finest expert), raw Top-1 must not.
    torch.manual_seed(0)
    experts = [make_expert("dvgo", r, tuple(AABB.tolist()), feature_dim=4, mlp_width=8) for r in (8, 12)]
    with torch.no_grad():
        for e in experts:
            e.density_grid.normal_(0, 3)
            e.feature_grid.normal_()
        gate = NeRFGate(2, 4, tuple(AABB.tolist()), feature_dim=4)
        gate.mlp[-1].weight.zero_()
        gate.mlp[-1].bias.copy_(torch.tensor([0.0, 1e-3]))  # p = (0.49975, 0.50025)
    kwargs = {"step_ratio": 0.5, "occupancy_resolution": 8}
    renorm = BoostNeRF(experts, gate, "topk", 1, tuple(AABB.tolist()), renormalize_top1=True, **kwargs)
    raw = BoostNeRF(experts, gate, "topk", 1, tuple(AABB.tolist()), **kwargs)
    single = BoostNeRF([experts[1]], None, "single", 1, tuple(AABB.tolist()), **kwargs)
    o = torch.tensor([[0.0, 0.0, -3.0]]).expand(64, 3).contiguous()
    d = torch.nn.functional.normalize(
        torch.randn(64, 3, generator=torch.Generator().manual_seed(1)) * 0.2 + torch.tensor([0.0, 0.0, 1.0]), dim=-1
    )
    with torch.no_grad():
        ref = single.render_rays(o, d)
        out = renorm.render_rays(o, d)
        dim = raw.render_rays(o, d)
    assert out["counts"].tolist() == [0, int(ref["points"])] and int(ref["points"]) > 0
    torch.testing.assert_close(out["rgb"], ref["rgb"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out["opacity"], ref["opacity"], rtol=1e-6, atol=1e-7)
    assert (dim["opacity"] < out["opacity"] - 1e-3).any()  # p ~ 0.5 halves each sample's alpha
