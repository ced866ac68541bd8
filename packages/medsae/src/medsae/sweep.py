"""Sweeps over dictionary size and k: a YAML grid, one normal Lightning run per point, the L0-vs-FVU frontier.

A sweep file (``configs/cpu/sweep.yaml``, ``configs/paper/sweep.yaml``) is a complete LightningCLI config: the base
SAE, plus a :class:`SweepGrid` in ``trainer.callbacks`` that declares the grid (dictionary sizes, k values, seeds and
optionally variants). The grid sits in a callback so that the file stays a plain config of the repository's CLI:
``medsae fit --config sweep.yaml`` trains the base point, and::

    medsae sweep --config packages/medsae/configs/cpu/sweep.yaml [--dry_run] [--name NAME] [--out DIR] [--fresh]
                 [any fit override, e.g. --trainer.max_epochs=5]

trains every point as its own ``fit`` through the real CLI. Point ``(variant, m, k, seed)`` is the run
``runs/medsae/<name>-<variant>-m<m>-k<k>-seed<seed>/version_N`` (checkpoint, ``config.yaml``, ``metrics.csv``) and
gets ``sweep_point.json`` (L0, FVU, dead latents on the held-out test split) next to them when it is evaluated.

Re-running the same command resumes: a point whose latest run has the same resolved config (``config.yaml``, the
logger and ``ckpt_path`` aside) and a ``sweep_point.json`` is reused as is; one that was interrupted after writing a
checkpoint continues from it (``--ckpt_path``, a new ``version_N`` as Lightning does); anything else starts afresh.
``--fresh`` ignores earlier runs. The frontier table and figure are written from the points' results:
``<out>/medsae_sweep.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.utilities import rank_zero_info
from reprokit.cli import ReproError, fit_test, run_cli, runs_root
from reprokit.plotting import figure, save_png
from reprokit.results import atomic_write_json, data_info, run_metadata, write_results

from medsae.sae import VARIANTS

PAPER = "medsae"
#: Variants whose sparsity is set by k; the L1 variants (standard, april) are swept over the dictionary size only.
K_VARIANTS = ("topk", "batchtopk", "matryoshka")
POINT_FILE = "sweep_point.json"
# Parts of a saved config.yaml that differ between a run and its resumption without changing what is trained.
_VOLATILE = ("ckpt_path", "experiment")
_VOLATILE_TRAINER = ("logger", "enable_progress_bar", "enable_model_summary")


def _log(msg: str) -> None:
    print(f"[{PAPER}] {msg}", flush=True)


@dataclass(frozen=True)
class SweepPoint:
    """One grid point: which SAE is trained with which seed."""

    variant: str
    d_sae: int
    k: int
    seed: int

    def experiment(self, name: str) -> str:
        """Run name under ``runs/medsae/``."""
        return f"{name}-{self.variant}-m{self.d_sae}-k{self.k}-seed{self.seed}"

    def overrides(self) -> list[str]:
        """The CLI arguments that turn the base config into this point."""
        return [
            f"--model.init_args.variant={self.variant}",
            f"--model.init_args.d_sae={self.d_sae}",
            f"--model.init_args.k={self.k}",
            f"--model.init_args.sae_seed={self.seed}",
            f"--seed_everything={self.seed}",
        ]


class SweepGrid(pl.Callback):
    """The grid of a sweep config, declared in its ``trainer.callbacks``; in a single ``fit`` it only reports.

    Points are the product ``variants x d_sae x k x seeds``; ``k`` applies to the TopK family, so an L1 variant
    (``standard``, ``april``) is swept over ``d_sae`` and seeds with the base config's ``k``.

    Args:
        d_sae: Dictionary sizes (number of latents).
        k: Active latents per sample (TopK family).
        seeds: Seeds; each sets ``seed_everything`` and the SAE's ``sae_seed``.
        variants: SAE variants to sweep (default: the base config's ``model.init_args.variant``).
    """

    def __init__(
        self,
        d_sae: list[int],
        k: list[int],
        seeds: list[int] | None = None,
        variants: list[str] | None = None,
    ):
        super().__init__()
        seeds = [0] if seeds is None else seeds
        for key, values in (("d_sae", d_sae), ("k", k), ("seeds", seeds)):
            if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
                raise ValueError(f"SweepGrid.{key} must be a non-empty list of integers, got {values!r}")
            if key != "seeds" and min(values) < 1:
                raise ValueError(f"SweepGrid.{key} must be positive, got {values!r}")
        unknown = sorted(set(variants or ()) - set(VARIANTS))
        if unknown:
            raise ValueError(f"SweepGrid.variants: unknown {unknown}; choose from {VARIANTS}")
        if variants is not None and not variants:
            raise ValueError("SweepGrid.variants must be a non-empty list or null (the base config's variant)")
        self.d_sae, self.k, self.seeds = list(d_sae), list(k), list(seeds)
        self.variants = None if variants is None else list(variants)

    def points(self, base_variant: str, base_k: int) -> list[SweepPoint]:
        """Every run of the grid, in a stable order (variant, d_sae, k, seed)."""
        points = []
        for variant in self.variants or [base_variant]:
            ks = self.k if variant in K_VARIANTS else [base_k]
            for m, k, seed in itertools.product(self.d_sae, ks, self.seeds):
                if k > m:
                    raise ValueError(f"sweep point {variant} d_sae={m} k={k}: k must not exceed d_sae")
                points.append(SweepPoint(variant, m, k, seed))
        return points

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        hp = pl_module.hparams
        variant, m, k = hp.get("variant"), hp.get("d_sae"), hp.get("k")
        points = self.points(variant, k)
        on_grid = any((p.variant, p.d_sae, p.k) == (variant, m, k) for p in points)
        where = "one point" if on_grid else "NOT a point"
        rank_zero_info(
            f"[{PAPER}] this config declares a sweep of {len(points)} runs; this fit ({variant}, d_sae={m}, k={k}) "
            f"is {where} of it. `{PAPER} sweep --config <this file>` trains them all."
        )


# -------------------------------------------------------------------------------------------------- reading
def read_sweep_config(config: str | Path) -> tuple[SweepGrid, dict]:
    """The grid and the raw YAML of a sweep config.

    Raises:
        ReproError: The file does not exist, or has no (or several) ``SweepGrid`` callbacks.
    """
    config = Path(config)
    if not config.is_file():
        raise ReproError(f"sweep config '{config}' does not exist")
    raw = yaml.safe_load(config.read_text()) or {}
    callbacks = (raw.get("trainer") or {}).get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    grids = [c for c in callbacks if isinstance(c, dict) and str(c.get("class_path", "")).endswith(".SweepGrid")]
    if len(grids) != 1:
        raise ReproError(
            f"sweep config '{config}' must declare exactly one medsae.sweep.SweepGrid in trainer.callbacks "
            f"(found {len(grids)}); see packages/medsae/configs/cpu/sweep.yaml"
        )
    try:
        grid = SweepGrid(**(grids[0].get("init_args") or {}))
    except (TypeError, ValueError) as err:
        raise ReproError(f"sweep config '{config}': {err}") from None
    return grid, raw


def expand(config: str | Path, seeds: Sequence[int] | None = None) -> list[SweepPoint]:
    """The runs a sweep config asks for (``seeds`` replaces the grid's seeds)."""
    grid, raw = read_sweep_config(config)
    if seeds:
        grid.seeds = list(seeds)
    init = (raw.get("model") or {}).get("init_args") or {}
    try:
        return grid.points(init.get("variant", "topk"), int(init.get("k", 16)))
    except ValueError as err:
        raise ReproError(f"sweep config '{config}': {err}") from None


# ------------------------------------------------------------------------------------------------ resuming
def _comparable(cfg: dict) -> dict:
    """A resolved config without what a resumption changes (ckpt_path, run name, logger, console settings)."""
    cfg = {k: v for k, v in cfg.items() if k not in _VOLATILE}
    cfg["trainer"] = {k: v for k, v in (cfg.get("trainer") or {}).items() if k not in _VOLATILE_TRAINER}
    return cfg


def resolved_config(config: str | Path, args: Sequence[str]) -> dict | None:
    """The config ``fit --config config *args`` would run, as LightningCLI saves it (parsed, nothing trained).

    None when the arguments do not parse: the ``fit`` that follows reports the mistake itself.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
        run_cli(PAPER, ["fit", "--config", str(config), *args, "--print_config"])
    cfg = yaml.safe_load(out.getvalue()) if out.getvalue().strip() else None
    return _comparable(cfg) if isinstance(cfg, dict) else None


def _version_dirs(experiment: str) -> list[Path]:
    """Run folders of an experiment, newest version first."""
    root = runs_root() / PAPER / experiment
    dirs = [p for p in root.glob("version_*") if p.is_dir() and p.name.removeprefix("version_").isdigit()]
    return sorted(dirs, key=lambda p: int(p.name.removeprefix("version_")), reverse=True)


def find_previous(experiment: str, expected: dict) -> tuple[str, Path] | None:
    """What an earlier run of this point left: ``("done", sweep_point.json)``, ``("resume", ckpt)`` or None.

    Only the newest run whose saved ``config.yaml`` equals ``expected`` (see :func:`resolved_config`) counts.
    """
    for run in _version_dirs(experiment):
        saved = run / "config.yaml"
        if not saved.is_file() or _comparable(yaml.safe_load(saved.read_text())) != expected:
            continue
        result = run / POINT_FILE
        if result.is_file():
            ckpt = json.loads(result.read_text()).get("ckpt")
            if ckpt and Path(ckpt).is_file():
                return "done", result
        ckpts = sorted((run / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        if ckpts:
            return "resume", ckpts[-1]
        # matched but no checkpoint yet (stopped in its first epoch): an older matching run may still help
    return None


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def reconstruction_stats(module, x: torch.Tensor, chunk: int = 4096) -> dict[str, float]:
    """L0 (mean active latents per sample), FVU and the fraction of dead latents of an SAE on ``x`` ``[N, d]``."""
    module.eval()
    f = torch.cat([module.sae.encode(x[i : i + chunk]) for i in range(0, len(x), chunk)])
    x_hat = torch.cat([module.sae.decode(f[i : i + chunk]) for i in range(0, len(f), chunk)])
    return {
        "l0": float((f != 0).sum(1).double().mean()),
        "fvu": float((x - x_hat).double().pow(2).sum() / (x - x.mean(0)).double().pow(2).sum()),
        "dead_frac": float(((f != 0).sum(0) == 0).double().mean()),
    }


def run_point(
    config: str | Path,
    point: SweepPoint,
    name: str,
    overrides: Sequence[str] = (),
    fresh: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train (or reuse, or resume) one grid point and evaluate it on the test split; returns its result row."""
    log = log or _log
    experiment = point.experiment(name)
    args = [*overrides, *point.overrides()]
    expected = None if fresh else resolved_config(config, args)
    previous = None if expected is None else find_previous(experiment, expected)
    if previous and previous[0] == "done":
        log(f"   {experiment}: finished earlier, reusing {previous[1]}")
        return json.loads(previous[1].read_text())
    resumed_from = None
    if previous:
        resumed_from = str(previous[1])
        log(f"   {experiment}: resuming from {resumed_from}")
        args.append(f"--ckpt_path={resumed_from}")
    start = time.perf_counter()
    res = fit_test(PAPER, config, experiment=experiment, overrides=args, test=False)
    x = res["cli"].datamodule.split_tensors("test")["x"]
    row = {
        **asdict(point),
        **reconstruction_stats(res["cli"].model, x),
        "experiment": experiment,
        "log_dir": str(res["log_dir"]),
        # A resumption that found the run already finished writes no new checkpoint: the one it resumed from holds.
        "ckpt": str(res["ckpt"] or resumed_from or ""),
        "resumed_from": resumed_from,
        "fit_time_s": time.perf_counter() - start,
    }
    if res["cli"].trainer.is_global_zero:
        atomic_write_json(Path(res["log_dir"]) / POINT_FILE, row)
    return row


def run_sweep(
    config: str | Path,
    *,
    name: str,
    points: Sequence[SweepPoint] | None = None,
    overrides: Sequence[str] = (),
    fresh: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Run every point of a sweep config (or ``points``) and return their result rows, in grid order."""
    log = log or _log
    points = expand(config) if points is None else list(points)
    rows = []
    for j, point in enumerate(points, 1):
        log(f"sweep {j}/{len(points)}: {point.experiment(name)}")
        rows.append(run_point(config, point, name, overrides, fresh, log))
    return rows


# --------------------------------------------------------------------------------------------------- results
def frontier(rows: Sequence[dict]) -> dict[tuple[str, int], list[tuple[float, float, int]]]:
    """Per ``(variant, d_sae)``: ``(L0, FVU, k)`` averaged over seeds, sorted by L0 (the sparsity-fidelity curve)."""
    groups: dict[tuple[str, int, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["d_sae"], r["k"]), []).append(r)
    curves: dict[tuple[str, int], list[tuple[float, float, int]]] = {}
    for (variant, m, k), rs in groups.items():
        l0 = sum(r["l0"] for r in rs) / len(rs)
        fvu = sum(r["fvu"] for r in rs) / len(rs)
        curves.setdefault((variant, m), []).append((l0, fvu, k))
    return {key: sorted(pts) for key, pts in sorted(curves.items())}


def plot_frontier(ax, rows: Sequence[dict]) -> None:
    """Draw the L0-vs-FVU curves of :func:`frontier` on a matplotlib axis."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for (variant, m), pts in frontier(rows).items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{variant}, {m} latents")
    ax.set(xlabel="L0 (active latents per image)", ylabel="FVU", xscale="log", title="sparsity vs reconstruction")
    # the grid's k values as plain tick labels (L0 ~ k for the TopK family)
    ks = sorted({r["k"] for r in rows})
    ax.set_xticks(ks)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7)


def write_sweep_results(out: str | Path, rows: Sequence[dict], *, scale: str, data: dict, meta: dict) -> None:
    """``<out>/medsae_sweep.{json,md,png}``: one row per run and the L0-vs-FVU frontier."""
    out = Path(out)
    metrics = {}
    for r in rows:
        key = f"sweep.{r['variant']}.m{r['d_sae']}.k{r['k']}.seed{r['seed']}"
        metrics |= {f"{key}.l0": r["l0"], f"{key}.fvu": r["fvu"], f"{key}.dead_frac": r["dead_frac"]}
    cols = [("variant", "variant"), ("d_sae", "latents"), ("k", "k"), ("seed", "seed"), ("l0", "L0")]
    cols += [("fvu", "FVU"), ("dead_frac", "dead"), ("experiment", "run")]
    write_results(
        out,
        "medsae_sweep",
        paper=PAPER,
        scale=scale,
        data=data,
        metrics=metrics,
        rows=[{k: v for k, v in r.items() if k != "resumed_from"} for r in rows],
        columns=cols,
        title="SAE sweep over dictionary size and k (L0 vs FVU on the held-out test split)",
        notes="Each row is one Lightning run under runs/medsae/<run>/version_N; FVU = sum |x - x_hat|^2 / "
        "sum |x - mean x|^2; dead = latents that never fire on the test split.",
        meta=meta,
    )
    fig, axes = figure(1, 1, width=5.5, height=4.0)
    plot_frontier(axes[0, 0], rows)
    fig.suptitle(f"{data.get('name', '')} — {data.get('label', '')}", fontsize=8)
    save_png(fig, out / "medsae_sweep.png")


# ------------------------------------------------------------------------------------------------------- CLI
def sweep_parser() -> argparse.ArgumentParser:
    """The ``medsae sweep`` command line (unknown ``--key=value`` arguments go to every run's ``fit``)."""
    parser = argparse.ArgumentParser(
        prog=f"{PAPER} sweep",
        description="Train every point of a sweep config (a LightningCLI config with a medsae.sweep.SweepGrid "
        "callback) as its own run under runs/medsae/, then write the L0-vs-FVU frontier. Re-running resumes. "
        "Any other --key=value is passed to every run's fit (e.g. --trainer.max_epochs=5).",
    )
    parser.add_argument("--config", type=Path, required=True, help="sweep config, e.g. configs/cpu/sweep.yaml")
    parser.add_argument("--name", default=None, help="run-name prefix (default: <config folder>-<config stem>)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: results/medsae/<name>)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="replace the grid's seeds")
    parser.add_argument("--fresh", action="store_true", help="ignore earlier runs of the same points")
    parser.add_argument("--dry_run", action="store_true", help="list the runs and exit")
    return parser


def main(argv: Sequence[str]) -> list[dict]:
    """``medsae sweep ...``: run the sweep and write its results; returns the result rows."""
    opts, overrides = sweep_parser().parse_known_args(list(argv))
    bad = [a for a in overrides if a.startswith("-") and not a.startswith("--")]
    if bad:
        raise ReproError(f"sweep: unrecognised arguments {bad}")
    name = opts.name or f"{opts.config.resolve().parent.name}-{opts.config.stem}"
    points = expand(opts.config, opts.seeds)
    if opts.dry_run:
        for p in points:
            print(f"{p.experiment(name)}  {' '.join([*overrides, *p.overrides()])}")
        return []
    start, cpu = time.perf_counter(), time.process_time()
    rows = run_sweep(opts.config, name=name, points=points, overrides=overrides, fresh=opts.fresh)
    _, raw = read_sweep_config(opts.config)
    data_args = (raw.get("data") or {}).get("init_args") or {}
    if data_args.get("source", "offline") == "offline":
        scale, data = "cpu", data_info("offline", "reprokit.cxr CXR-like images (8 exact findings)")
    else:
        scale, data = "paper", data_info("real", "CheXpert image embeddings", data_args.get("data_dir"))
    meta = run_metadata(
        seed=sorted({p.seed for p in points}),
        config=str(opts.config),
        wall_time_s=time.perf_counter() - start,
        cpu_time_s=time.process_time() - cpu,
        overrides=list(overrides),
    )
    out = opts.out or Path("results") / PAPER / name
    write_sweep_results(out, rows, scale=scale, data=data, meta=meta)
    print(f"[{PAPER}] sweep of {len(rows)} runs -> {out}/medsae_sweep.{{json,md,png}}")
    return rows
