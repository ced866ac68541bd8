"""The example's protocol: train on a few seeds, test, write the table, a figure and the expected-number check."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from reprokit.cli import fit_test, package_path
from reprokit.plotting import COLORS, figure, save_png
from reprokit.results import data_info, print_check, run_metadata, scale_name, write_results

PAPER = "example_paper"


def run(scale: str, quick: bool, out: Path, data_dir: Path | None = None, seeds: list[int] | None = None) -> None:
    """Reproduce the example's table at ``scale`` (``paper`` or ``cpu``) into ``out``."""
    configs = package_path(PAPER, "configs")
    if scale == "paper":
        config = configs / "paper" / "optdigits.yaml"
        overrides = [f"--data.init_args.data_dir={data_dir}"] if data_dir else []
        data = data_info("real", "UCI optdigits", data_dir)
    else:
        config = configs / "cpu" / "digits.yaml"
        overrides = []
        data = data_info("offline", "sklearn digits (1,797 real 8x8 digits)")
    if quick:
        overrides.append("--trainer.max_epochs=1")
    seeds = seeds or ([0] if quick else [0, 1, 2])
    start = time.perf_counter()
    rows = []
    for i, seed in enumerate(seeds, 1):
        print(f"[{PAPER}] seed {seed} ({i}/{len(seeds)})", flush=True)
        result = fit_test(
            PAPER,
            config,
            experiment=f"reproduce-{scale}-seed{seed}",
            overrides=[*overrides, f"--seed_everything={seed}", "--trainer.enable_progress_bar=false"],
        )
        rows.append({"seed": seed, "test_acc": result["test"]["test/acc"], "fit_time_s": result["fit_time_s"]})
    accs = [r["test_acc"] for r in rows]
    metrics = {"test_acc.mean": statistics.fmean(accs), "test_acc.std": statistics.pstdev(accs)}
    scale_key = scale_name(scale, quick)
    write_results(
        out,
        "digits",
        paper=PAPER,
        scale=scale_key,
        data=data,
        metrics=metrics,
        rows=rows,
        columns=[("seed", "seed"), ("test_acc", "test accuracy"), ("fit_time_s", "fit time (s)")],
        title="example_paper: MLP on 8x8 digits",
        meta=run_metadata(seed=seeds, config=str(config), wall_time_s=time.perf_counter() - start),
    )
    fig, ax = figure()
    ax = ax[0, 0]
    ax.bar([str(s) for s in seeds], accs, color=COLORS["method"])
    ax.set(xlabel="seed", ylabel="test accuracy", ylim=(0, 1), title=f"{data['name']} — {data['label']}")
    save_png(fig, Path(out) / "digits_acc.png")
    print_check(out, package_path(PAPER, "expected"))
