"""GoDe CPU benchmarks: the rasterizer's cost curve (tiled vs a dense one-tile baseline, same run), per-level render
time and bytes of a leveled model, and compression ratio against the raw float32 PLY.

Run: ``python benchmarks/gode/bench_render.py`` (about a minute on 2 cores). Writes benchmarks/results/gode_render.json.
"""

from __future__ import annotations

import os
import tempfile

import torch
from gode.compression import encode, raw_float32_ply_bytes
from gode.data import intrinsics, viewmats_from_blender
from gode.gaussians import Gaussians
from gode.levels import assign_levels, level_mask, level_sizes
from gode.rasterizer import rasterize
from reprokit.bench import paired_ab, time_fn, torch_threads, write_bench
from reprokit.scenes import BLENDER_CAMERA_ANGLE_X, focal_from_angle, hemisphere_poses


def camera(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    viewmat = viewmats_from_blender(hemisphere_poses(1, 4.0, 0))[0]
    return viewmat, intrinsics(focal_from_angle(size, BLENDER_CAMERA_ANGLE_X), size, size)


def model(num: int, seed: int = 0) -> Gaussians:
    # Scales of a trained scene: about the spacing of the points (init_scale 0.5 of a uniform fill's spacing).
    g = Gaussians(num, sh_degree=2, extent=0.9, init_scale=0.5, seed=seed)
    with torch.no_grad():
        g.shN.normal_(0, 0.05, generator=torch.Generator().manual_seed(seed))
    return g


def cost_curve() -> list[dict]:
    rows = []
    for size in (32, 64, 128):
        viewmat, K = camera(size)
        for num in (500, 2000, 8000):
            if size * size * num > 64 * 64 * 8000:
                continue  # the dense baseline's [pixels, N] tensors get too large
            params = model(num).activated()

            def tiled(p=params, s=size, v=viewmat, k=K):
                return rasterize(**p, viewmat=v, K=k, width=s, height=s, tile_size=16)

            def dense(p=params, s=size, v=viewmat, k=K):
                return rasterize(**p, viewmat=v, K=k, width=s, height=s, tile_size=s)

            with torch.no_grad():
                ab = paired_ab(tiled, dense, pairs=3)

            leaf = {k: v.detach().requires_grad_(True) for k, v in params.items()}

            def step(p=leaf, s=size, v=viewmat, k=K):
                out = rasterize(**p, viewmat=v, K=k, width=s, height=s)
                out.rgb.mean().backward()

            train = time_fn(step, repeats=3)
            row = {
                "image": size,
                "gaussians": num,
                "tiled_forward_ms": 1000 * ab.a.median_s,
                "dense_forward_ms": 1000 * ab.b.median_s,
                "dense_over_tiled": ab.median_ratio,
                "tiled_forward_backward_ms": 1000 * train.median_s,
                "peak_rss_mb": train.peak_rss_mb,
            }
            print(row, flush=True)
            rows.append(row)
    return rows


def ladder(num: int = 4000, num_levels: int = 5) -> list[dict]:
    g = model(num, seed=1)
    raw = {k: v.detach() for k, v in g.raw().items()}
    # Levels from a stand-in importance (opacity x volume): the cost of each level does not depend on the scores.
    score = torch.sigmoid(raw["opacity_logits"]) * torch.exp(raw["log_scales"]).prod(-1)
    sizes = level_sizes(num, num_levels, 200, 0.75)
    level_of = assign_levels(lambda active: score, num, sizes)
    viewmat, K = camera(64)
    params = g.activated()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        level_bytes = encode(raw, level_of, num_levels, 2, tmp)
    for level in range(num_levels):
        idx = level_mask(level_of, level).nonzero().flatten()
        sub = {k: v.detach()[idx] for k, v in params.items()}
        with torch.no_grad():
            t = time_fn(lambda sub=sub: rasterize(**sub, viewmat=viewmat, K=K, width=64, height=64), repeats=5)
        ply = raw_float32_ply_bytes(len(idx), 2)
        row = {
            "level": level,
            "gaussians": len(idx),
            "render_ms_64px": 1000 * t.median_s,
            "bytes": level_bytes[level],
            "ply_float32_bytes": ply,
            "compression_ratio_vs_ply": ply / level_bytes[level],
        }
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    # Two threads as on the target 2-core machine; GODE_BENCH_THREADS=1 on a busy machine (OpenMP oversubscription).
    with torch_threads(int(os.environ.get("GODE_BENCH_THREADS", "2"))):
        curve = cost_curve()
        levels = ladder()
    top = levels[-1]
    print(
        f"dense/tiled forward time, median over sizes: "
        f"{sorted(r['dense_over_tiled'] for r in curve)[len(curve) // 2]:.2f}x; "
        f"top level compression vs float32 PLY: {top['compression_ratio_vs_ply']:.1f}x"
    )
    path = write_bench("gode_render", {"cost_curve": curve, "ladder": levels})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
