"""GoDe's protocol: train one leveled model, compress it per level, and compare the ladder with its baselines.

1. ``fit`` + ``test`` the GoDe config (3DGS-MCMC, level assignment, LoD fine-tuning with QAT): PSNR/SSIM per level.
2. Encode the model (quantise, Morton, zstd) -> MB per level; decode every level and check it renders as trained.
3. Baselines at the same Gaussian counts and the same training budget (backbone steps + fine-tuning steps):
   separately trained non-scalable models (same recipe, one level), and naive-pruning ladders: the same backbone
   (same seed, so the same model at ``lod_start``) with its nested levels ranked by opacity or at random instead of
   by gradient importance, then the same LoD fine-tuning (``level_criterion``). Diagnostics: post-hoc pruning (by
   opacity, at random, by GoDe's masking) of the separate top-level model, without any fine-tuning.
4. Write the ladder (JSON + Markdown), the PSNR-vs-MB curve and a strip of renders per level; check expected rows.
"""

from __future__ import annotations

import functools
import itertools
import json
import time
from pathlib import Path

import torch
from reprokit.cli import fit_test, package_path
from reprokit.plotting import COLORS, figure, save_png
from reprokit.results import data_info, print_check, run_metadata, scale_name, write_results

from gode.compression import decode, encode, raw_float32_ply_bytes
from gode.evaluate import evaluate, opacity_prune, random_prune, render_time_ms, subset_params
from gode.gaussians import activate
from gode.levels import assign_levels, level_mask, level_sizes
from gode.lightning_module import GoDeModule

PAPER = "gode"
#: Opacity above which a Gaussian counts as visibly contributing (the "opaque" column).
OPAQUE = 0.05
#: Paper-scale configs: results name -> (config stem, scene folder under --data_dir).
PAPER_RUNS = {
    "ladder_mipnerf360": ("mipnerf360_garden", "360_v2/garden"),
    "ladder_tandt": ("tandt_truck", "tandt/truck"),
    "ladder_db": ("db_playroom", "db/playroom"),
}
#: The quick CPU run: a 32 px scene, 300 Gaussians, 3 levels, 5 + 5 epochs (backbone + LoD fine-tuning).
QUICK = [
    "--data.init_args.image_size=32",
    "--data.init_args.n_train=12",
    "--data.init_args.n_test=3",
    "--data.init_args.max_val_views=1",
    "--model.init_args.num_gaussians=300",
    "--model.init_args.num_levels=3",
    "--model.init_args.min_level_size=50",
    "--model.init_args.sh_degree=1",
    "--model.init_args.sh_degree_interval=48",
    "--model.init_args.lod_start=60",
    "--model.init_args.schedule_steps=60",
    "--model.init_args.refine_start=24",
    "--model.init_args.refine_stop=50",
    "--model.init_args.refine_every=12",
    "--trainer.max_epochs=10",
    # an even shorter schedule: twice the CPU config's learning rates
    "--model.init_args.lr_means=0.00256",
    "--model.init_args.lr_sh0=0.04",
    "--model.init_args.lr_shN=0.002",
    # validation (and so the checkpoint) only at the last epoch
    "--trainer.check_val_every_n_epoch=10",
]


def _module(result: dict) -> GoDeModule:
    if not result["ckpt"]:
        raise RuntimeError("the fit wrote no checkpoint: check_val_every_n_epoch must divide max_epochs")
    module = GoDeModule.load_from_checkpoint(result["ckpt"], map_location="cpu")
    return module.eval()


def _fit(config: Path, experiment: str, overrides: list[str]) -> dict:
    print(f"[{PAPER}] fit+test {experiment}", flush=True)
    return fit_test(PAPER, config, experiment=experiment, overrides=[*overrides, "--trainer.enable_progress_bar=false"])


def _mb(nbytes: int) -> float:
    return nbytes / 1e6


def run_one(
    config: Path, overrides: list[str], out: Path, name: str, scale: str, quick: bool, data: dict, seed: int
) -> None:
    """The whole protocol for one scene config, results named ``name``."""
    start = time.perf_counter()
    gode_run = _fit(config, f"{name}-{scale_name(scale, quick)}-gode", overrides)
    module = _module(gode_run)
    datamodule = gode_run["cli"].datamodule
    views = datamodule.test_set
    counts = module.level_counts()
    num_levels = len(counts)
    hp = module.hparams

    # --- compression: bytes per level, and the decoded levels must render as the model does
    stream_dir = out / "bitstreams" / name
    raw = {k: v.detach() for k, v in module.gaussians.raw().items()}
    level_bytes = encode(raw, module.level_of, num_levels, hp.sh_degree, stream_dir)
    max_diff = 0.0
    with torch.no_grad():
        for level in range(num_levels):
            decoded, _, _ = decode(stream_dir, level)
            ours = module.render(views[0], level)
            theirs = module.render_params(activate(decoded), views[0])
            max_diff = max(max_diff, float((ours.rgb - theirs.rgb).abs().max()))

    rows, metrics = [], {}
    for level in range(num_levels):
        idx = level_mask(module.level_of, level).nonzero().flatten()
        params = subset_params(module, idx)
        scores = evaluate(module, params, views)
        row = {
            "level": level,
            "gaussians": counts[level],
            "mb": _mb(level_bytes[level]),
            "psnr": scores["psnr"],
            "ssim": scores["ssim"],
            "lpips": scores["lpips"],
            "render_ms": render_time_ms(module, params, views[0]),
            # Gaussians that visibly contribute; a saturated ladder shows up as levels adding only faint ones.
            "opaque": int((params["opacities"] > OPAQUE).sum()),
        }
        row["fps"] = 1000.0 / row["render_ms"]
        rows.append(row)
        for key in ("psnr", "ssim", "lpips", "mb", "gaussians", "render_ms", "opaque"):
            metrics[f"gode.L{level}.{key}"] = row[key]

    # --- baselines at the same counts
    # Naive-pruning ladders: GoDe's pipeline with the ranking swapped, so both sides get the same backbone and the same
    # fine-tuning steps; only the choice of Gaussians per level differs.
    for criterion in ("opacity", "random"):
        ladder_run = _fit(
            config,
            f"{name}-{scale_name(scale, quick)}-{criterion}-ladder",
            [*overrides, f"--model.init_args.level_criterion={criterion}"],
        )
        ladder = _module(ladder_run)
        if ladder.level_counts() != counts:
            raise RuntimeError(f"the {criterion} ladder has levels {ladder.level_counts()}, GoDe's {counts}")
        ladder_bytes = encode(
            {k: v.detach() for k, v in ladder.gaussians.raw().items()},
            ladder.level_of,
            num_levels,
            hp.sh_degree,
            out / "bitstreams" / f"{name}-{criterion}-ladder",
        )
        for level in range(num_levels):
            idx = level_mask(ladder.level_of, level).nonzero().flatten()
            scores = evaluate(ladder, subset_params(ladder, idx), views)
            rows[level][f"{criterion}_ladder_psnr"] = scores["psnr"]
            rows[level][f"{criterion}_ladder_mb"] = _mb(ladder_bytes[level])
            metrics[f"{criterion}_ladder.L{level}.psnr"] = scores["psnr"]

    # Quick: the top level only; full: the top, middle and first levels (each is a full training run). The top comes
    # first: the claims and the pruning baselines need it.
    separate_levels = [num_levels - 1] if quick else sorted({0, num_levels // 2, num_levels - 1}, reverse=True)
    top_model = None
    for level in separate_levels:
        count = counts[level]
        base = [
            *overrides,
            f"--model.init_args.num_gaussians={count}",
            "--model.init_args.num_levels=1",
            "--model.init_args.max_fraction=1.0",
            f"--model.init_args.min_level_size={count}",
        ]
        result = _fit(config, f"{name}-{scale_name(scale, quick)}-separate-L{level}", base)
        sep = _module(result)
        scores = evaluate(sep, subset_params(sep, torch.arange(count)), views)
        nbytes = encode(
            {k: v.detach() for k, v in sep.gaussians.raw().items()},
            sep.level_of,
            1,
            hp.sh_degree,
            out / "bitstreams" / f"{name}-separate-L{level}",
        )[-1]
        rows[level]["separate_psnr"] = scores["psnr"]
        rows[level]["separate_mb"] = _mb(nbytes)
        metrics[f"separate.L{level}.psnr"] = scores["psnr"]
        metrics[f"separate.L{level}.mb"] = _mb(nbytes)
        if level == num_levels - 1:
            top_model = sep
    assert top_model is not None
    metrics["separate.top.opaque"] = int((torch.sigmoid(top_model.gaussians.opacity_logits) > OPAQUE).sum())
    # Post-hoc diagnostics on the separate top model, no fine-tuning: opacity / random pruning and GoDe's iterative
    # masking (the ranking criterion alone).
    train = datamodule.train_set
    n_views = len(train) if hp.importance_views is None else min(hp.importance_views, len(train))
    with torch.enable_grad():
        score = functools.partial(top_model.importance_scores, views=[train[i] for i in range(n_views)])
        importance_level_of = assign_levels(score, len(top_model.gaussians), counts)
    for level in range(num_levels):
        for label, idx in (
            ("opacity_prune", opacity_prune(top_model, counts[level])),
            ("random_prune", random_prune(top_model, counts[level], seed=level)),
            ("importance_prune", level_mask(importance_level_of, level).nonzero().flatten()),
        ):
            scores = evaluate(top_model, subset_params(top_model, idx), views)
            level_of = torch.full_like(top_model.level_of, -1)
            level_of[idx] = 0
            nbytes = encode(
                {k: v.detach() for k, v in top_model.gaussians.raw().items()},
                level_of,
                1,
                hp.sh_degree,
                out / "bitstreams" / f"{name}-{label}-L{level}",
            )[-1]
            rows[level][f"{label}_psnr"] = scores["psnr"]
            rows[level][f"{label}_mb"] = _mb(nbytes)
            metrics[f"{label}.L{level}.psnr"] = scores["psnr"]

    # --- the claims
    psnrs = [r["psnr"] for r in rows]
    top = num_levels - 1
    metrics["claim.psnr_monotonic"] = float(all(b > a for a, b in itertools.pairwise(psnrs)))
    metrics["claim.top_gap_db"] = metrics[f"separate.L{top}.psnr"] - psnrs[top]
    lower = range(top) if top > 0 else range(1)
    metrics["claim.min_margin_vs_opacity_db"] = min(psnrs[lv] - rows[lv]["opacity_ladder_psnr"] for lv in lower)
    metrics["claim.min_margin_vs_random_db"] = min(psnrs[lv] - rows[lv]["random_ladder_psnr"] for lv in lower)
    metrics["diag.min_margin_vs_posthoc_opacity_prune_db"] = min(
        psnrs[lv] - rows[lv]["opacity_prune_psnr"] for lv in lower
    )
    metrics["diag.min_margin_vs_posthoc_random_prune_db"] = min(
        psnrs[lv] - rows[lv]["random_prune_psnr"] for lv in lower
    )
    metrics["diag.importance_minus_opacity_prune_db"] = min(
        rows[lv]["importance_prune_psnr"] - rows[lv]["opacity_prune_psnr"] for lv in lower
    )
    metrics["gode.top.psnr"] = psnrs[top]
    metrics["compression.ratio_vs_ply"] = raw_float32_ply_bytes(counts[top], hp.sh_degree) / level_bytes[top]
    metrics["decode.max_abs_diff"] = max_diff

    wall = time.perf_counter() - start
    columns = [
        ("level", "LoD"),
        ("gaussians", "#Gaussians"),
        ("mb", "MB"),
        ("psnr", "PSNR"),
        ("ssim", "SSIM"),
        ("lpips", "LPIPS"),
        ("fps", "FPS (CPU)"),
        ("opaque", "opacity > 0.05"),
        ("separate_psnr", "separate PSNR"),
        ("opacity_ladder_psnr", "opacity-ranked levels PSNR"),
        ("random_ladder_psnr", "random-ranked levels PSNR"),
        ("opacity_prune_psnr", "post-hoc opacity-pruned PSNR"),
        ("random_prune_psnr", "post-hoc random-pruned PSNR"),
        ("importance_prune_psnr", "post-hoc importance-masked PSNR"),
    ]
    notes = (
        f"{data['label']}: {data['name']}. One GoDe model, {num_levels} nested levels (sizes "
        f"{level_sizes(len(module.gaussians), hp.num_levels, hp.min_level_size, hp.max_fraction)}); MB = bytes to "
        "decode levels 0..l (header, dictionaries and level files; Morton order + zstd 22 with long-distance "
        "matching). PSNR/SSIM/LPIPS on the test views of the quantised model (what the files decode to); "
        "LPIPS (VGG) is n/a when its weights are not in the torch hub cache (offline). 'separate' = a "
        "non-scalable model trained with the same recipe and steps at that count; 'opacity-/random-ranked levels' "
        "= GoDe's pipeline (same backbone, nesting and LoD fine-tuning steps) with the levels ranked by opacity / at "
        "random instead of by gradient importance (the claims' baselines); 'post-hoc' columns prune the separate "
        f"top-level model without fine-tuning ({metrics['separate.top.opaque']} of its {counts[-1]} Gaussians have "
        f"opacity > {OPAQUE}; diagnostics). Decoded-vs-trained max |Δ| = {max_diff:.2g}. "
        f"Claims: PSNR monotonic = {bool(metrics['claim.psnr_monotonic'])}; top-level gap to the separate model = "
        f"{metrics['claim.top_gap_db']:+.2f} dB (want <= 0.5); min margin over opacity / random pruning = "
        f"{metrics['claim.min_margin_vs_opacity_db']:+.2f} / {metrics['claim.min_margin_vs_random_db']:+.2f} dB "
        f"(post-hoc pruning of the separate model: {metrics['diag.min_margin_vs_posthoc_opacity_prune_db']:+.2f} / "
        f"{metrics['diag.min_margin_vs_posthoc_random_prune_db']:+.2f} dB). "
        f"Wall time {wall:.0f} s."
    )
    scale_key = scale_name(scale, quick)
    write_results(
        out,
        name,
        paper=PAPER,
        scale=scale_key,
        data=data,
        metrics=metrics,
        rows=rows,
        columns=columns,
        title=f"GoDe level-of-detail ladder ({scale_key})",
        notes=notes,
        meta=run_metadata(seed=seed, config=str(config), wall_time_s=wall, overrides=overrides),
    )
    _plot_curve(rows, out / f"{name}_psnr_vs_mb.png", data)
    _plot_strip(module, views, out / f"{name}_levels.png", data)


def _plot_curve(rows: list[dict], path: Path, data: dict) -> None:
    fig, axes = figure(width=5.0, height=3.6)
    ax = axes[0, 0]
    ax.plot([r["mb"] for r in rows], [r["psnr"] for r in rows], "o-", color=COLORS["method"], label="GoDe (one model)")
    sep = [r for r in rows if "separate_psnr" in r]
    ax.plot(
        [r["separate_mb"] for r in sep],
        [r["separate_psnr"] for r in sep],
        "s--",
        color=COLORS["reference"],
        label="separate models",
    )
    for key, marker, color, label in (
        ("opacity_ladder", "^-", COLORS["baseline"], "opacity-ranked levels"),
        ("random_ladder", "v-", COLORS["extra"], "random-ranked levels"),
        ("opacity_prune", "^:", COLORS["baseline"], "post-hoc opacity pruning"),
        ("random_prune", "v:", COLORS["extra"], "post-hoc random pruning"),
        ("importance_prune", "d:", "#9467bd", "post-hoc importance masking"),  # GoDe's masking without fine-tuning
    ):
        ax.plot([r[f"{key}_mb"] for r in rows], [r[f"{key}_psnr"] for r in rows], marker, color=color, label=label)
    ax.set(xscale="log", xlabel="MB on disk", ylabel="test PSNR (dB)", title=f"PSNR vs size — {data['label']}")
    ax.legend(fontsize=8)
    save_png(fig, path)


@torch.no_grad()
def _plot_strip(module: GoDeModule, views, path: Path, data: dict) -> None:
    view = views[0]
    counts = module.level_counts()
    fig, axes = figure(1, len(counts) + 1, width=2.0, height=2.2)
    for level in range(len(counts)):
        axes[0, level].imshow(module.render(view, level).rgb.clamp(0, 1).numpy())
        axes[0, level].set_title(f"LoD{level}: {counts[level]} G", fontsize=8)
    axes[0, -1].imshow(view["image"].numpy())
    axes[0, -1].set_title("ground truth", fontsize=8)
    for ax in axes[0]:
        ax.axis("off")
    fig.suptitle(f"GoDe levels ({data['label']})", fontsize=9)
    save_png(fig, path)


def run(scale: str, quick: bool, out: Path, data_dir: Path | None = None, seeds: list[int] | None = None) -> None:
    """Reproduce GoDe's ladder at ``scale`` (``paper``: real scenes under ``data_dir``; ``cpu``: offline scene)."""
    configs = package_path(PAPER, "configs")
    out = Path(out)
    seed = (seeds or [0])[0]
    common = [f"--seed_everything={seed}"]
    if scale == "paper":
        for name, (stem, folder) in PAPER_RUNS.items():
            root = Path(data_dir) / folder if data_dir else None
            overrides = [*common, f"--data.init_args.data_dir={root}"] if root else common
            data = data_info("real", stem, root)
            run_one(configs / "paper" / f"{stem}.yaml", overrides, out, name, scale, quick, data, seed)
    else:
        overrides = [*common, *(QUICK if quick else [])]
        data = data_info("offline", "procedural Blender-format scene (reprokit.scenes, seed 0)")
        run_one(configs / "cpu" / "gode.yaml", overrides, out, "ladder", scale, quick, data, seed)
    print(json.dumps({"results": str(out)}))
    print_check(out, package_path(PAPER, "expected"))
