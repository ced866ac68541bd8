"""boost_nerf on CPU: rays/s per backbone, sparse dispatch vs all experts on all points, memory per batch of rays.

Run: ``OMP_NUM_THREADS=2 python benchmarks/boost_nerf/bench_boost_nerf.py`` (about 10 s on 2 idle cores).
Every ratio is measured in this process against a baseline timed alternately with it (reprokit.bench.paired_ab).
"""

from __future__ import annotations

import torch
from boost_nerf.encoding import act_shift_for
from boost_nerf.experts import make_expert
from boost_nerf.gate import NeRFGate, top_k_routing
from boost_nerf.moe import BoostNeRF, dispatch
from reprokit.bench import PeakMemory, paired_ab, time_fn, write_bench
from reprokit.scenes import ProceduralScene, camera_rays, focal_from_angle, hemisphere_poses

AABB = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)
KWARGS = {
    "dvgo": {"feature_dim": 12, "mlp_width": 32},
    "tensorf": {"density_components": 8, "appearance_components": 12, "feature_dim": 12, "mlp_width": 32},
    "ngp": {"levels": 8, "log2_table_size": 14, "base_resolution": 8, "mlp_width": 32},
}
N_RAYS = 1024


def _rays() -> tuple[torch.Tensor, torch.Tensor]:
    c2w = hemisphere_poses(4, 4.0, seed=0)
    o, d = camera_rays(16, 16, focal_from_angle(16, 0.69), c2w)
    return o.reshape(-1, 3)[:N_RAYS], d.reshape(-1, 3)[:N_RAYS]


def _saved_for_backward_mb(fn) -> float:
    """MiB of tensors autograd keeps for the backward pass of ``fn()`` (the activation memory of one batch).

    RSS cannot show this on CPU: the allocator reuses memory freed by earlier steps, so the high-water mark does not
    move. Tensors saved twice are counted twice (an upper bound).
    """
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total / 2**20


def _fitted_occupancy(model: BoostNeRF) -> None:
    # Empty-space skipping as after training: the ground-truth scene's occupied cells.
    from boost_nerf.render import cell_centers

    g = model.occupancy.shape[0]
    occ = ProceduralScene.from_seed(0).occupancy(cell_centers(g, model.aabb))
    model.occupancy.copy_(occ)


def bench_backbones() -> dict:
    """Training and rendering rays/s of a single expert (32^3) per backbone; ratios relative to DVGO."""
    o, d = _rays()
    out = {}
    for backbone in ("dvgo", "tensorf", "ngp"):
        torch.manual_seed(0)
        model = BoostNeRF([make_expert(backbone, 32, AABB, **KWARGS[backbone])], None, "single", 1, AABB)
        _fitted_occupancy(model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def train_step(model=model, opt=opt):
            loss = model.render_rays(o, d, torch.rand(len(o)))["rgb"].square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        def render(model=model):
            with torch.no_grad():
                model.render_rays(o, d)

        train, infer = time_fn(train_step, warmup=2, repeats=5), time_fn(render, warmup=1, repeats=5)
        with PeakMemory() as mem:
            train_step()
        saved_mb = _saved_for_backward_mb(lambda model=model: model.render_rays(o, d, torch.rand(len(o))))
        out[backbone] = {
            "train_rays_per_s": N_RAYS / train.median_s,
            "render_rays_per_s": N_RAYS / infer.median_s,
            "peak_rss_mb_train_step": mem.peak_rss_mb,
            "saved_for_backward_mb_per_batch": saved_mb,
        }
        print(
            f"{backbone:8s} train {out[backbone]['train_rays_per_s']:8.0f} rays/s   "
            f"render {out[backbone]['render_rays_per_s']:8.0f} rays/s   "
            f"activations {saved_mb:.1f} MiB per {N_RAYS} rays (process peak {mem.peak_rss_mb:.0f} MiB)"
        )
    for b in ("tensorf", "ngp"):
        out[b]["train_speed_vs_dvgo"] = out[b]["train_rays_per_s"] / out["dvgo"]["train_rays_per_s"]
    return out


def bench_ngp_fused_filter() -> dict:
    """Single Instant-NGP training step: one forward on all candidates (fused) vs filter, then forward on kept points.

    At initialisation the filter keeps nearly every candidate, so the fused path saves a whole density pass here: an
    upper bound of the saving once training has made empty space transparent (then the fused forward also runs on
    the points the filter drops).
    """
    o, d = _rays()
    torch.manual_seed(0)
    expert = make_expert("ngp", 32, AABB, **KWARGS["ngp"])
    model = BoostNeRF([expert], None, "single", 1, AABB)
    _fitted_occupancy(model)
    jitter = torch.rand(len(o))

    def step(fused: bool) -> None:
        expert.density_shares_forward = fused
        model.zero_grad()
        model.render_rays(o, d, jitter)["rgb"].square().mean().backward()

    res = paired_ab(lambda: step(True), lambda: step(False), pairs=5)
    del expert.density_shares_forward  # back to the class default
    kept = model.render_rays(o, d, jitter)
    out = {
        "unfused_over_fused_time": res.median_ratio,
        "kept_share_of_candidates": float(kept["points"]) / max(float(kept["candidates"]), 1.0),
    }
    print(
        f"ngp single-expert step: filter-then-evaluate / fused = {res.median_ratio:.2f}x "
        f"(filter keeps {100 * out['kept_share_of_candidates']:.0f}% of candidates)"
    )
    return out


def bench_dispatch() -> dict:
    """Sparse top-k dispatch vs every expert on every point (the dense-with-mask baseline), M = 5 experts."""
    torch.manual_seed(0)
    experts = [make_expert("dvgo", r, AABB, feature_dim=12, mlp_width=64) for r in (24, 28, 32, 40, 48)]
    gate = NeRFGate(5, 16, AABB, 12)
    n = 100_000
    x = torch.rand(n, 3) * 2 - 1
    d = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    shift = act_shift_for(1e-2)
    with torch.no_grad():
        probs = torch.softmax(gate(x, d) * 5, -1)
    out = {}
    for k in (1, 2):
        weights, index = top_k_routing(probs, k)

        def sparse(weights=weights, index=index):
            with torch.no_grad():
                dispatch(experts, x, d, weights, index, shift, 0.5)

        def dense(weights=weights):
            # same blend, computed by evaluating all experts everywhere and zero-weighting the unrouted points
            with torch.no_grad():
                dispatch(experts, x, d, weights, None, shift, 0.5)

        res = paired_ab(sparse, dense, pairs=5)
        out[f"top{k}"] = {
            "dense_over_sparse_time": res.median_ratio,
            "expected_from_k_over_m": 5 / k,
            "sparse_peak_rss_mb": res.a.peak_rss_mb,
            "dense_peak_rss_mb": res.b.peak_rss_mb,
        }
        print(f"top-{k}: dense / sparse time = {res.median_ratio:.2f}x (compute ratio M/k = {5 / k:.1f})")
    return out


def main() -> None:
    """Run both benchmarks and write benchmarks/results/boost_nerf.json."""
    torch.manual_seed(0)
    payload = {"threads": torch.get_num_threads(), "rays_per_batch": N_RAYS}
    payload["backbones"] = bench_backbones()
    payload["dispatch"] = bench_dispatch()
    payload["ngp_fused_filter"] = bench_ngp_fused_filter()
    path = write_bench("boost_nerf", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
