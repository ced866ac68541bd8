"""The paper's protocol as CLI runs: encoder pretraining, the conditioned diffusion model and the baselines, scored.

Per seed: (1) pretrain the contrastive encoder on healthy slices; (2) train the diffusion model conditioned on it
(frozen); (3) train the baselines (cDDPM-style encoder from scratch, unconditional DDPM, autoencoder); the trained
unconditional DDPM is also evaluated with AnoDDPM's partial reverse chain. Every model is then tested on the same
anomalous validation volumes (threshold), anomalous test volumes and healthy test volumes. Trained checkpoints are
cached under ``runs/ca_diffusion_uad/`` and reused when the same command runs again.

At paper scale the IXI-trained models are evaluated on BraTS21 and MSLUB, and the models trained for the BraTS21 run
(trained on IXI only; the cache reuses them) are also tested on NOVA by box detection (``configs/paper/nova_*``).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from pathlib import Path

import torch
from reprokit.cli import package_path, run_cli, runs_root
from reprokit.plotting import COLORS, figure, save_png
from reprokit.results import atomic_write_text, data_info, print_check, run_metadata, scale_name, write_results

PAPER = "ca_diffusion_uad"
# (name, config stem, label, extra test overrides); "anoddpm" re-tests the trained unconditional DDPM.
METHODS = [
    ("contrastive_cond", "contrastive_cond", "contrastive-conditioned DDPM (ours, the paper's method)"),
    ("cddpm", "cddpm", "cDDPM-style (encoder from scratch)"),
    ("ddpm_uncond", "ddpm_uncond", "unconditional DDPM, one-step multi-t"),
    ("anoddpm", "ddpm_uncond", "AnoDDPM (unconditional, partial reverse chain)"),
    ("autoencoder", "autoencoder", "convolutional autoencoder"),
]
SCORES = ["dice", "auprc", "auroc", "map_30", "map_50", "map", "acc_50", "l1_healthy"]
QUICK_DATA = [
    "--data.init_args.image_size=32",
    "--data.init_args.z_range=[30, 60, 3]",
    "--data.init_args.train_subjects=16",
    "--data.init_args.val_subjects=3",
    "--data.init_args.test_subjects=4",
    "--data.init_args.healthy_test_subjects=3",
]
QUICK_STEPS = {"encoder": 20, "diffusion": 40, "autoencoder": 40}
QUICK_CHAIN_STEPS = 11
COMMON = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def _cached_fit(config: Path, experiment: str, overrides: list[str]) -> str:
    """Fit through the CLI unless a checkpoint of the same config and overrides exists; return its path."""
    key = hashlib.sha256(json.dumps([config.read_text(), overrides]).encode()).hexdigest()[:16]
    # One small file per trained model, so reproduce runs of different seeds can share the cache concurrently.
    marker = runs_root() / PAPER / "reproduce_cache" / f"{experiment}-{key}.txt"
    if marker.is_file() and Path(marker.read_text().strip()).is_file():
        print(f"[{PAPER}] {experiment}: cached checkpoint {marker.read_text().strip()}", flush=True)
        return marker.read_text().strip()
    cli = run_cli(PAPER, ["fit", "--config", str(config), "--experiment", experiment, *overrides])
    cb = cli.trainer.checkpoint_callback
    ckpt = cb.last_model_path or cb.best_model_path
    atomic_write_text(marker, ckpt + "\n")
    return ckpt


def _retarget(ckpt: str, suffix: str, **hparams: object) -> str:
    """A copy of a checkpoint whose saved hyperparameters are changed (``test --ckpt_path`` restores them).

    LightningCLI puts a checkpoint's hyperparameters over the command line, so evaluating the same weights with
    another inference scheme needs them changed in the file itself.
    """
    path = Path(ckpt).with_name(Path(ckpt).stem + f"-{suffix}.ckpt")
    if path.is_file() and path.stat().st_mtime_ns > Path(ckpt).stat().st_mtime_ns:
        return str(path)  # made by an earlier run from the same checkpoint
    obj = torch.load(ckpt, map_location="cpu", weights_only=False)
    hp = obj["hyper_parameters"]
    target = hp["dict_kwargs"] if "dict_kwargs" in hp else hp
    target.update(hparams)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
    return str(path)


def _cached_test(config: Path, experiment: str, overrides: list[str], ckpt: str) -> dict:
    """Test a checkpoint through the CLI (or reuse an earlier test of the same file); ``{"scores", "examples"}``."""
    key = hashlib.sha256(json.dumps([ckpt, Path(ckpt).stat().st_mtime_ns, overrides]).encode()).hexdigest()[:16]
    marker = runs_root() / PAPER / "reproduce_cache" / f"{experiment}-{key}.pt"
    if marker.is_file():
        print(f"[{PAPER}] {experiment}: cached test results {marker}", flush=True)
        return torch.load(marker, weights_only=True)
    cli = run_cli(PAPER, ["test", "--config", str(config), "--experiment", experiment, *overrides, "--ckpt_path", ckpt])
    result = {"scores": dict(cli.model.scores), "examples": dict(cli.model.examples)}
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    torch.save(result, tmp)
    tmp.replace(marker)
    return result


def _fmt(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "n/a"
    sd = statistics.pstdev(finite) if len(finite) > 1 else 0.0
    return f"{statistics.fmean(finite):.3f} ± {sd:.3f}"


def run(scale: str, quick: bool, out: Path, data_dir: Path | None = None, seeds: list[int] | None = None) -> None:
    """Reproduce the comparison at ``scale`` (``paper``: real data; ``cpu``: offline phantoms) into ``out``."""
    configs = package_path(PAPER, "configs")
    out = Path(out)
    start = time.perf_counter()
    seeds = seeds or ([0] if quick else [0, 1, 2])
    key = scale_name(scale, quick)
    if scale == "paper":
        base = Path(data_dir or "data")
        datasets = {"uad_brats21": "brats21", "uad_mslub": "mslub"}
        for name, stem in datasets.items():
            root = base / f"ixi_{stem}"
            data = data_info("real", f"IXI (train) + {stem} (test)", root)
            _protocol(
                configs / "paper",
                stem + "_",
                "ixi_encoder",
                name,
                key,
                data,
                [f"--data.init_args.data_dir={root}"],
                seeds,
                quick,
                out,
                start,
            )
        # NOVA is evaluation only: the BraTS21 run's IXI-trained models (cached) tested on NOVA's T2 slices.
        nova = base / "nova"
        _protocol(
            configs / "paper",
            "brats21_",
            "ixi_encoder",
            "uad_nova",
            key,
            data_info("real", "IXI (train) + NOVA (evaluation only, boxes)", nova),
            [f"--data.init_args.data_dir={base / 'ixi_brats21'}"],
            seeds,
            quick,
            out,
            start,
            test_prefix="nova_",
            test_overrides=[f"--data.init_args.data_dir={nova}"],
        )
        return
    data = data_info(
        "offline",
        "MNI152 phantom population (nilearn template, synthetic ellipsoid lesions in the healthy intensity range)",
        quick=quick,
    )
    extra = QUICK_DATA if quick else []
    _protocol(configs / "cpu", "", "encoder", "uad_offline", key, data, extra, seeds, quick, out, start)


def _protocol(
    folder: Path,
    prefix: str,
    encoder_stem: str,
    name: str,
    key: str,
    data: dict,
    data_overrides: list[str],
    seeds: list[int],
    quick: bool,
    out: Path,
    start: float,
    test_prefix: str | None = None,
    test_overrides: list[str] | None = None,
) -> None:
    """Train (cached) and test every method for every seed, then write results and figures.

    Models are fitted with ``folder/<prefix><stem>.yaml`` plus ``data_overrides``; they are tested with
    ``folder/<test_prefix><stem>.yaml`` plus ``test_overrides`` when given (NOVA: other data, same weights),
    otherwise with the fitting config and ``data_overrides``.
    """
    per_method: dict[str, list[dict[str, float]]] = {m: [] for m, _, _ in METHODS}
    examples: dict[str, dict[str, torch.Tensor]] = {}
    for i, seed in enumerate(seeds, 1):
        tag = f"{key}-seed{seed}"
        base = [*COMMON, *data_overrides, f"--seed_everything={seed}", f"--data.init_args.split_seed={seed}"]
        test_base = base if test_overrides is None else [*COMMON, *test_overrides, f"--seed_everything={seed}"]

        def steps(kind: str) -> list[str]:
            return [f"--trainer.max_steps={QUICK_STEPS[kind]}"] if quick else []

        print(f"[{PAPER}] seed {seed} ({i}/{len(seeds)}): encoder pretraining", flush=True)
        enc_ckpt = _cached_fit(folder / f"{encoder_stem}.yaml", f"reproduce-{tag}-encoder", [*base, *steps("encoder")])
        ckpts: dict[str, str] = {}
        for method, stem, label in METHODS:
            config = folder / f"{prefix}{stem}.yaml"
            kind = "autoencoder" if method == "autoencoder" else "diffusion"
            fit_over = [*base, *steps(kind)]
            if method == "contrastive_cond":
                fit_over.append(f"--model.init_args.encoder_ckpt={enc_ckpt}")
            if stem not in ckpts:
                print(f"[{PAPER}] seed {seed}: training {label}", flush=True)
                ckpts[stem] = _cached_fit(config, f"reproduce-{tag}-{stem}", fit_over)
            ckpt = ckpts[stem]
            if method == "anoddpm":
                chain = {"chain_steps": QUICK_CHAIN_STEPS} if quick else {}
                ckpt = _retarget(ckpt, f"chain{chain.get('chain_steps', '')}", inference="chain", **chain)
            print(f"[{PAPER}] seed {seed}: testing {label}", flush=True)
            test_config = config if test_prefix is None else folder / f"{test_prefix}{stem}.yaml"
            test_name = f"reproduce-{tag}-{method}-test" if test_prefix is None else f"reproduce-{tag}-{method}-{name}"
            result = _cached_test(test_config, test_name, test_base, ckpt)
            per_method[method].append(result["scores"])
            if method not in examples:
                examples[method] = result["examples"]
    metrics: dict[str, float] = {}
    rows = []
    for method, _, label in METHODS:
        row = {"method": label}
        for s in SCORES:
            values = [r.get(s, math.nan) for r in per_method[method]]
            finite = [v for v in values if math.isfinite(v)]
            metrics[f"{method}.{s}.mean"] = statistics.fmean(finite) if finite else math.nan
            metrics[f"{method}.{s}.std"] = statistics.pstdev(finite) if len(finite) > 1 else 0.0
            row[s] = _fmt(values)
        rows.append(row)
    # The claim: contrastive conditioning localises anomalies better than the unconditional DDPM (same inference).
    for s in ("dice", "auprc", "map_30"):
        gains = [
            a.get(s, math.nan) - b.get(s, math.nan)
            for a, b in zip(per_method["contrastive_cond"], per_method["ddpm_uncond"])
        ]
        metrics[f"claim.{s}_gain_vs_ddpm.mean"] = statistics.fmean(gains)
        metrics[f"claim.{s}_gain_vs_ddpm.min"] = min(gains)
    wall = time.perf_counter() - start
    write_results(
        out,
        name,
        paper=PAPER,
        scale=key,
        data=data,
        metrics=metrics,
        rows=rows,
        columns=[("method", "method"), *[(s, s) for s in SCORES]],
        title=f"{PAPER}: anomaly segmentation and detection ({data['label']})",
        notes=(
            f"Mean ± std over seeds {seeds}. Dice at the best-Dice threshold of the validation volumes; AUROC/AUPRC "
            "per volume inside the eroded brain mask; box mAP/ACC@50 on slice-wise connected components of the "
            "thresholded map; l1_healthy: mean |x - x_hat| inside the brain on healthy test volumes. "
            f"Claim check (contrastive − unconditional DDPM): Dice {metrics['claim.dice_gain_vs_ddpm.mean']:+.3f}, "
            f"AUPRC {metrics['claim.auprc_gain_vs_ddpm.mean']:+.3f}, "
            f"mAP@0.3 {metrics['claim.map_30_gain_vs_ddpm.mean']:+.3f}. Wall time {wall:.0f} s."
        ),
        meta=run_metadata(seed=seeds, config=str(folder), wall_time_s=wall, per_seed=per_method),
    )
    _figures(out, name, examples, per_method, data)
    print_check(out, package_path(PAPER, "expected"))


def _figures(out: Path, name: str, examples: dict, per_method: dict, data: dict) -> None:
    cols = [("x", "input"), ("x_hat", "reconstruction"), ("map", "anomaly map"), ("lesion", "ground truth")]
    fig, axes = figure(len(examples), len(cols), width=2.2, height=2.2)
    vmax = max(float(ex["map"].max()) for ex in examples.values() if ex) or 1.0
    for r, (method, ex) in enumerate(examples.items()):
        for c, (k, title) in enumerate(cols):
            ax = axes[r, c]
            ax.axis("off")
            if not ex:
                continue
            ax.imshow(ex[k], cmap="gray" if k != "map" else "inferno", vmin=0, vmax=vmax if k == "map" else 1)
            if r == 0:
                ax.set_title(title)
        axes[r, 0].text(-2, ex["x"].shape[0] / 2 if ex else 0, method, rotation=90, ha="right", va="center")
    save_png(fig, out / f"{name}_examples.png")
    fig, axes = figure(1, 2, width=4.5, height=3.2)
    methods = list(per_method)
    # Box-only data (NOVA) has no pixel masks, hence no Dice / AUPRC: plot its box scores instead.
    has_pixels = any(math.isfinite(r.get("dice", math.nan)) for rs in per_method.values() for r in rs)
    for ax, s in zip(axes[0], ("dice", "auprc") if has_pixels else ("map_30", "map_50")):
        means = [statistics.fmean([r.get(s, math.nan) for r in per_method[m]]) for m in methods]
        colors = [COLORS["method"] if m == "contrastive_cond" else COLORS["baseline"] for m in methods]
        ax.bar(range(len(methods)), means, color=colors)
        for k, m in enumerate(methods):
            ax.scatter([k] * len(per_method[m]), [r.get(s, math.nan) for r in per_method[m]], color="k", s=8, zorder=3)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set(ylabel=s, ylim=(0, 1), title=f"{s} ({data['label']})")
    save_png(fig, out / f"{name}_scores.png")
