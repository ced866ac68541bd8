"""The paper's protocol as CLI runs: pretrain one expert per resolution, then the joint Top-1 / Top-2 / Ensemble stage.

Writes the table baseline | Top-1 | Top-2 | Ensemble (PSNR / SSIM / GFLOPs per frame) per backbone, test renders
and an orbit GIF. ``--scale cpu`` runs the offline procedural scene (the CPU-scale analogue); ``--scale paper`` runs
NeRF-Synthetic scenes from ``--data_dir`` (one folder per scene) with the paper's resolutions (GPU), or, when
``--data_dir`` is ``nerf_llff_data/`` (it holds ``fern/poses_bounds.npy``), the paper's LLFF experiment: baseline and
Top-2 per backbone on the eight forward-facing scenes in NDC (results ``boost_table_llff``).
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from reprokit.cli import fit_test, package_path
from reprokit.plotting import COLORS, figure, save_png
from reprokit.results import atomic_write_json, data_info, print_check, run_metadata, scale_name, write_results
from reprokit.scenes import camera_rays, focal_from_angle, orbit_poses

from boost_nerf.metrics import count_flops, lpips_or_none, nonzero_parameters, psnr, ssim

PAPER = "boost_nerf"
MODES = ("top1", "top2", "ensemble")
BLENDER_SCENES = ("chair", "drums", "ficus", "hotdog", "lego", "materials", "mic", "ship")
LLFF_SCENES = ("fern", "flower", "fortress", "horns", "leaves", "orchids", "room", "trex")
#: Stage-2 runs per dataset: the paper reports only Top-2 on LLFF.
DATASET_MODES = {"offline": MODES, "blender": MODES, "llff": ("top2",)}

#: --quick: one backbone, two small experts, few steps (a smoke run of the whole protocol).
#: The gate reuses the 16^3 expert's checkpoint (the lowest resolution), so stage 1 trains two models.
QUICK = {
    "backbones": ("dvgo",),
    "gate": 16,
    "experts": (16, 24),
    "weights": (1.0, 1.5),
    "image_size": 24,
    "views": 24,
    "test_views": 3,
    "expert_steps": 48,
    "moe_steps": 24,
    "batch": 512,
}
#: full --scale cpu: the offline analogue of the paper's table for the three backbones.
FULL_CPU = {
    "backbones": ("dvgo", "tensorf", "ngp"),
    "gate": 16,
    "experts": (24, 32, 48),
    "expert_steps": 300,
    "moe_steps": 200,
}


def _common(scale: str, quick: bool, data_dir: Path | None) -> list[str]:
    args = ["--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=1"]
    if scale == "cpu" and quick:
        q = QUICK
        args += [
            f"--data.init_args.image_size={q['image_size']}",
            f"--data.init_args.offline_views={q['views']}",
            f"--data.init_args.offline_test_views={q['test_views']}",
            f"--data.init_args.max_test_views={q['test_views']}",
            f"--data.init_args.batch_size={q['batch']}",
            "--model.init_args.occupancy_every=8",
            "--trainer.limit_val_batches=0",
        ]
    if data_dir is not None:
        args.append(f"--data.init_args.data_dir={data_dir}")
    return args


def _viewdirs(rays: dict[str, torch.Tensor], i: int) -> torch.Tensor | None:
    return rays["viewdirs"][i] if "viewdirs" in rays else None


@torch.no_grad()
def evaluate(module, datamodule, n_flop_views: int = 1) -> dict[str, Any]:
    """Test-view PSNR / SSIM (/ LPIPS), GFLOPs and seconds per frame, ``||w||_0`` and expert shares of a model."""
    module.eval()
    datamodule.setup("test")
    split = datamodule.test_split
    rays = datamodule.test_set.rays
    psnrs, ssims, lpips, times, renders, counts = [], [], [], [], [], 0
    for i in range(len(split.images)):
        start = time.perf_counter()
        out = module.render_view(rays["origins"][i], rays["dirs"][i], _viewdirs(rays, i))
        times.append(time.perf_counter() - start)
        psnrs.append(float(psnr(out["rgb"], rays["rgb"][i])))
        ssims.append(float(ssim(out["rgb"], rays["rgb"][i])))
        lpips.append(lpips_or_none(out["rgb"], rays["rgb"][i]) if i == 0 else None)
        renders.append(out["rgb"])
        counts = counts + out["counts"]
    flops, split = [], {"filter": 0, "gate": 0, "experts": 0}
    for i in range(n_flop_views):
        counted, out = count_flops(module.render_view, rays["origins"][i], rays["dirs"][i], _viewdirs(rays, i))
        flops.append(counted)
        # The same FLOPs from the points each part evaluated (filter, gate, each routed expert): where they go.
        parts = module.model.matmul_flops(out["counts"], int(out["points"]), int(out["candidates"]))
        for key in split:
            split[key] += parts[key] / n_flop_views
    share = (counts.float() / counts.sum().clamp_min(1)).tolist()
    return {
        "psnr": sum(psnrs) / len(psnrs),
        "ssim": sum(ssims) / len(ssims),
        "lpips": lpips[0],
        "gflops": sum(flops) / len(flops) / 1e9,
        "gflops_split": {key: value / 1e9 for key, value in split.items()},
        "render_s": sum(times) / len(times),
        "params_nonzero": nonzero_parameters(module.model),
        "expert_share": share,
        "renders": torch.stack(renders),
        "targets": rays["rgb"],
    }


def _orbit_gif(module, split, path: Path, frames: int = 12) -> None:
    from PIL import Image

    c2w = orbit_poses(frames, float(split.c2w[0, :3, 3].norm()), 30.0)
    focal = focal_from_angle(split.width, split.camera_angle_x)
    images = []
    for pose in c2w:
        o, d = camera_rays(split.height, split.width, focal, pose)
        rgb = module.render_view(o, d)["rgb"]
        images.append(Image.fromarray((rgb.clamp(0, 1) * 255).round().byte().numpy()))
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=120, loop=0)


def _fit(config: Path, experiment: str, args: list[str]) -> tuple[Any, float]:
    result = fit_test(PAPER, config, experiment=experiment, overrides=args, test=False)
    return result, result["fit_time_s"]


def run_backbone(
    backbone: str, scale: str, quick: bool, out: Path, data_dir: Path | None, seed: int, dataset: str = "offline"
) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, Any]]:
    """Both stages for one backbone; returns table rows, flat metrics and what the figures need.

    ``dataset`` is ``"offline"`` (scale cpu), ``"blender"`` or ``"llff"`` (scale paper): it picks the configs
    (``configs/paper/<dataset>_*.yaml``) and the stage-2 runs (:data:`DATASET_MODES`). ``keep["timing"]`` holds the
    wall and CPU seconds of every fit, the evaluations and the orbit GIF (written to ``timing.json``).
    """
    configs = package_path(PAPER, "configs")
    sub = "cpu" if scale == "cpu" else "paper"
    prefix = "" if scale == "cpu" else f"{dataset}_"
    modes = DATASET_MODES[dataset]
    common = [*_common(scale, quick, data_dir), f"--seed_everything={seed}"]
    spec = QUICK if quick else FULL_CPU
    gate_res = spec["gate"] if scale == "cpu" else 128
    resolutions = list(spec["experts"]) if scale == "cpu" else [160, 200, 256, 300, 350]
    expert_steps = [f"--trainer.max_steps={spec['expert_steps']}"] if scale == "cpu" else []
    moe_steps = [f"--trainer.max_steps={spec['moe_steps']}"] if scale == "cpu" else []
    if quick:
        moe_overrides = [
            f"--model.init_args.expert_resolutions=[{','.join(map(str, resolutions))}]",
            f"--model.init_args.gate_resolution={gate_res}",
            f"--model.init_args.resolution_weights=[{','.join(map(str, QUICK['weights']))}]",
        ]
    else:
        moe_overrides = []
    ckpts: dict[int, str] = {}
    rows, metrics, keep = [], {}, {}
    # Where this backbone's time goes (seconds of wall and of this process's CPU, per fit and for the evaluations).
    timing: dict[str, float] = {}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    base_cfg = configs / sub / f"{prefix}{backbone}_expert{resolutions[-1]}.yaml"
    for res in sorted({gate_res, *resolutions}):
        print(f"[{PAPER}] {backbone}: stage 1, expert {res}^3", flush=True)
        cfg = configs / sub / f"{prefix}{backbone}_expert{res}.yaml"
        extra = []
        if not cfg.is_file():  # quick resolutions: the smallest config, resized
            cfg, extra = base_cfg, [f"--model.init_args.expert_resolutions=[{res}]"]
        cpu = time.process_time()
        result, fit_s = _fit(cfg, f"{scale}-{backbone}-expert{res}", [*common, *expert_steps, *extra])
        timing[f"fit_expert{res}_s"], timing[f"fit_expert{res}_cpu_s"] = fit_s, time.process_time() - cpu
        ckpts[res] = result["ckpt"]
        if res == resolutions[-1]:
            ev = _timed(timing, "eval_s", evaluate, result["cli"].model, result["cli"].datamodule)
            rows.append(_row(backbone, "baseline", f"single {res}^3", ev, fit_s))
            keep["baseline"] = ev
            keep["split"] = result["cli"].datamodule.test_split
    for name in modes:
        print(f"[{PAPER}] {backbone}: stage 2, {name}", flush=True)
        cfg = configs / sub / f"{prefix}{backbone}_{name}.yaml"
        init = [
            f"--model.init_args.expert_checkpoints=[{','.join(ckpts[r] for r in resolutions)}]",
            f"--model.init_args.gate_checkpoint={ckpts[gate_res]}",
        ]
        cpu = time.process_time()
        result, fit_s = _fit(cfg, f"{scale}-{backbone}-{name}", [*common, *moe_steps, *moe_overrides, *init])
        timing[f"fit_{name}_s"], timing[f"fit_{name}_cpu_s"] = fit_s, time.process_time() - cpu
        ev = _timed(timing, "eval_s", evaluate, result["cli"].model, result["cli"].datamodule)
        rows.append(_row(backbone, name, f"{len(resolutions)} experts {resolutions}, gate {gate_res}^3", ev, fit_s))
        keep[name] = ev
        if name == "top2" and dataset != "llff":  # an orbit on a sphere does not suit forward-facing NDC scenes
            _timed(
                timing,
                "orbit_gif_s",
                _orbit_gif,
                result["cli"].model,
                keep["split"],
                out / f"orbit_{backbone}_top2.gif",
            )
    for row in rows:
        for key in ("psnr", "ssim", "gflops"):
            metrics[f"{backbone}.{row['method']}.{key}"] = row[key]
    metrics[f"{backbone}.top2_minus_baseline.psnr"] = (
        metrics[f"{backbone}.top2.psnr"] - metrics[f"{backbone}.baseline.psnr"]
    )
    metrics[f"{backbone}.top2_over_baseline.gflops"] = metrics[f"{backbone}.top2.gflops"] / max(
        metrics[f"{backbone}.baseline.gflops"], 1e-12
    )
    timing["total_s"], timing["total_cpu_s"] = time.perf_counter() - wall0, time.process_time() - cpu0
    keep["timing"] = timing
    return rows, metrics, keep


def _timed(timing: dict[str, float], key: str, fn, *args):
    """``fn(*args)``, adding its wall seconds to ``timing[key]``."""
    start = time.perf_counter()
    result = fn(*args)
    timing[key] = timing.get(key, 0.0) + time.perf_counter() - start
    return result


def _row(backbone: str, method: str, setup: str, ev: dict[str, Any], fit_s: float) -> dict[str, Any]:
    return {
        "backbone": backbone,
        "method": method,
        "setup": setup,
        "psnr": ev["psnr"],
        "ssim": ev["ssim"],
        "lpips": ev["lpips"] if ev["lpips"] is not None else float("nan"),
        "gflops": ev["gflops"],
        "gflops_split": " / ".join(f"{ev['gflops_split'][k]:.3f}" for k in ("filter", "gate", "experts")),
        "render_s": ev["render_s"],
        "params_nonzero": ev["params_nonzero"],
        "expert_share": " / ".join(f"{s:.2f}" for s in ev["expert_share"]),
        "fit_s": fit_s,
    }


def _figures(out: Path, backbone: str, keep: dict[str, Any], label: str, modes: tuple[str, ...] = MODES) -> None:
    methods = ["baseline", *modes]
    n_views = min(3, len(keep["baseline"]["targets"]))
    fig, axes = figure(n_views, len(methods) + 1, width=2.0, height=2.0)
    for v in range(n_views):
        axes[v, 0].imshow(keep["baseline"]["targets"][v].clamp(0, 1).numpy())
        axes[v, 0].set_title("ground truth" if v == 0 else "")
        for j, m in enumerate(methods, 1):
            axes[v, j].imshow(keep[m]["renders"][v].clamp(0, 1).numpy())
            axes[v, j].set_title(f"{m}" if v == 0 else "")
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(f"{backbone}: test views ({label})")
    save_png(fig, out / f"renders_{backbone}.png")
    fig, ax = figure()
    ax = ax[0, 0]
    colors = [COLORS["baseline"], COLORS["reference"], COLORS["method"], COLORS["extra"]]
    for m, c in zip(methods, colors[: len(methods)], strict=True):
        ax.scatter(keep[m]["gflops"], keep[m]["psnr"], color=c, label=m, s=40)
    ax.set(xlabel="GFLOPs per frame (torch FLOP counter)", ylabel="test PSNR (dB)", title=f"{backbone} ({label})")
    ax.legend()
    save_png(fig, out / f"psnr_vs_gflops_{backbone}.png")


def _write_table(
    name: str,
    out: Path,
    scale: str,
    quick: bool,
    data: dict[str, Any],
    rows: list[dict[str, Any]],
    per_scene: dict[str, list[float]],
    seed: int,
    wall_s: float,
) -> None:
    methods = ["Top-2"] if name.endswith("llff") else ["Top-1", "Top-2", "Ensemble"]
    # The paper reports the mean over the scenes.
    metrics = {key: sum(values) / len(values) for key, values in per_scene.items()}
    lpips_note = (
        "LPIPS: weights unavailable offline (n/a), not zero"
        if all(math.isnan(r["lpips"]) for r in rows)
        else "LPIPS (VGG)"
    )
    write_results(
        out,
        name,
        paper=PAPER,
        scale=scale_name(scale, quick),
        data=data,
        metrics=metrics,
        rows=rows,
        columns=[
            ("scene", "scene"),
            ("backbone", "backbone"),
            ("method", "method"),
            ("setup", "setup"),
            ("psnr", "PSNR"),
            ("ssim", "SSIM"),
            ("lpips", "LPIPS"),
            ("gflops", "GFLOPs/frame"),
            ("gflops_split", "filter / gate / experts GFLOPs"),
            ("render_s", "render s/frame"),
            ("params_nonzero", "||w||_0"),
            ("expert_share", "points per expert"),
            ("fit_s", "fit s"),
        ],
        title=f"Boost Your NeRF: baseline | {' | '.join(methods)} — {data['label']} ({lpips_note})",
        meta=run_metadata(
            seed=seed, config="configs/" + ("cpu" if scale == "cpu" else "paper"), wall_time_s=wall_s, quick=quick
        ),
    )


def parallel_jobs(n_backbones: int, scale: str) -> int:
    """Processes the backbones of one scene run in: ``$BOOST_NERF_JOBS``, else one per torch thread (CPU only).

    The backbones are independent experiments. On CPU their per-point ops (grid lookups, 32-wide MLPs on a few
    thousand points) gain little from intra-op threads, so the cores torch was given (``OMP_NUM_THREADS``) are better
    spent on separate single-threaded processes, at most one per backbone. ``--scale paper`` stays sequential: it
    trains on one GPU.
    """
    env = os.environ.get("BOOST_NERF_JOBS")
    if env:
        return max(1, min(int(env), n_backbones))
    if scale != "cpu":
        return 1
    return max(1, min(n_backbones, torch.get_num_threads()))


def _backbone_job(
    backbone: str,
    scale: str,
    quick: bool,
    out: Path,
    scene_dir: Path | None,
    seed: int,
    dataset: str,
    label: str,
    threads: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, float]]:
    """One backbone's runs and figures (in a worker process when backbones run in parallel).

    Returns:
        Table rows, flat metrics, and where the backbone's time went (see :func:`run_backbone`).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    rows, metrics, keep = run_backbone(backbone, scale, quick, out, scene_dir, seed, dataset)
    _figures(out, backbone, keep, label, DATASET_MODES[dataset])
    return rows, metrics, keep.get("timing", {})


def run(scale: str, quick: bool, out: Path, data_dir: Path | None = None, seeds: list[int] | None = None) -> None:
    """Reproduce the table at ``scale`` (``paper`` or ``cpu``) into ``out``."""
    out = Path(out)
    start = time.perf_counter()
    seed = (seeds or [0])[0]
    dataset, name, label = "offline", "boost_table", None
    if scale == "paper":
        if data_dir is None:
            from reprokit.cli import ReproError

            raise ReproError(
                "reproduce --scale paper needs --data_dir pointing at nerf_synthetic/ (scenes "
                f"{', '.join(BLENDER_SCENES)}) or nerf_llff_data/ (scenes {', '.join(LLFF_SCENES)})"
            )
        data_dir = Path(data_dir)
        if (data_dir / LLFF_SCENES[0] / "poses_bounds.npy").is_file():
            dataset, name, label, scenes = "llff", "boost_table_llff", "LLFF", LLFF_SCENES
        else:
            dataset, label, scenes = "blender", "NeRF-Synthetic", BLENDER_SCENES
        data = data_info("real", label, data_dir)
        scene_dirs = [data_dir / s for s in scenes]
    else:
        data = data_info("offline", "procedural Blender-format scene (reprokit.scenes)", seed=0)
        scene_dirs = [None]
    backbones = QUICK["backbones"] if quick else FULL_CPU["backbones"] if scale == "cpu" else ("dvgo", "tensorf", "ngp")
    rows: list[dict[str, Any]] = []
    per_scene: dict[str, list[float]] = {}
    timings: dict[str, dict[str, float]] = {}
    jobs = parallel_jobs(len(backbones), scale)
    threads = max(1, torch.get_num_threads() // jobs)
    for scene_dir in scene_dirs:
        args = [(b, scale, quick, out, scene_dir, seed, dataset, label or data["label"]) for b in backbones]
        if jobs == 1:
            results = (_backbone_job(*a) for a in args)
        else:
            print(f"[{PAPER}] {len(backbones)} backbones in {jobs} processes of {threads} thread(s)", flush=True)
            pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn"))
            results = pool.map(_backbone_job, *zip(*args), [threads] * len(args))
        for backbone, (b_rows, b_metrics, b_timing) in zip(backbones, results, strict=True):  # in backbone order
            timings[f"{scene_dir.name if scene_dir else 'procedural'}/{backbone}"] = b_timing
            rows += [{**r, "scene": scene_dir.name if scene_dir else "procedural"} for r in b_rows]
            for key, value in b_metrics.items():
                per_scene.setdefault(key, []).append(value)
            # Written after every backbone, so a long run that is stopped keeps what it finished.
            _write_table(name, out, scale, quick, data, rows, per_scene, seed, time.perf_counter() - start)
        if jobs > 1:
            pool.shutdown()
    atomic_write_json(
        out / "timing.json",
        {
            "wall_time_s": time.perf_counter() - start,
            "cpu_time_s_main_process": time.process_time(),
            "scale": scale,
            "quick": quick,
            "processes": jobs,
            "threads_per_process": threads,
            "backbones": timings,
        },
    )
    print_check(out, package_path(PAPER, "expected"))
