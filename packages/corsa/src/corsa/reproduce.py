"""The paper's protocol as CLI runs, from step-1 pretraining to the reader study.

Step-1 pretraining, step-2 k-fold fine-tuning (CE vs CE + FairKL, with and without step 1), fold ensembles and model
soups, metrics overall / per institution / bias-aligned vs bias-conflicting, ROC curves, and the reader-study analysis.

``--scale cpu`` runs the offline analogue (reprokit.cxr images); ``--scale paper`` runs the paper configs on CheXpert
and CORDA from ``--data_dir`` (``<data_dir>/CheXpert-v1.0-small`` and ``<data_dir>/CORDA``). The reader study always
uses simulated reads (the paper's are not public) and says so; a real reads CSV goes through
:func:`corsa.reader_study.load_reads` and :func:`corsa.reader_study.analyse` the same way.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import yaml
from reprokit.cli import fit_test, package_path
from reprokit.plotting import COLORS, figure, save_png
from reprokit.results import data_info, print_check, run_metadata, scale_name, write_results

from corsa.data import HOSPITALS, CovidDataModule
from corsa.ensemble import ensemble_probabilities, soup
from corsa.lightning_module import CovidFineTuning
from corsa.metrics import bootstrap_ci, grouped_metrics
from corsa.reader_study import analyse, load_reads, plot_reader_study, simulate_reads

PAPER = "corsa"
NO_BAR = "--trainer.enable_progress_bar=false"
#: (name, FairKL lambda, use the step-1 encoder)
VARIANTS = (("ce_scratch", 0.0, False), ("fairkl_scratch", 1.0, False), ("ce_pretrained", 0.0, True),
            ("fairkl_pretrained", 1.0, True))  # fmt: skip
QUICK_STEP1 = ["--data.init_args.n_train=600", "--data.init_args.n_val=100", "--data.init_args.n_test=200",
               "--trainer.max_epochs=1"]  # fmt: skip
#: The quick run: plain CE vs CE + FairKL from scratch (step 1 and the pretrained variants only in the full run).
QUICK_VARIANTS = VARIANTS[:2]
QUICK_STEP2 = ["--data.init_args.n_pool=480", "--data.init_args.n_test=300", "--trainer.max_epochs=4",
               "--model.init_args.milestones=[3]"]  # fmt: skip


def _init_args(config: Path, overrides: list[str]) -> dict:
    """The datamodule's init_args of ``config`` with ``--data.init_args.key=value`` overrides applied."""
    args = dict(yaml.safe_load(config.read_text())["data"]["init_args"])
    for o in overrides:
        if o.startswith("--data.init_args."):
            key, value = o.removeprefix("--data.init_args.").split("=", 1)
            args[key] = yaml.safe_load(value)
    return args


@torch.no_grad()
def _predict(model: CovidFineTuning, loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    model.eval()
    probs, ys, gs = [], [], []
    for x, y, g in loader:
        probs.append(model(x)[0].softmax(1)[:, 1])
        ys.append(y)
        gs.append(g)
    return torch.cat(probs), torch.cat(ys), torch.cat(gs)


def _summary(prob, y, g, majority, n_boot: int) -> dict[str, float]:
    m = grouped_metrics(prob, y, g, HOSPITALS, majority)
    for key in ("bacc", "auc"):
        m[f"all/{key}_lo"], m[f"all/{key}_hi"] = bootstrap_ci(prob, y, key, n=n_boot)
    return m


def run(scale: str, quick: bool, out: Path, data_dir: Path | None = None, seeds: list[int] | None = None) -> None:
    """Reproduce the corsa protocol at ``scale`` (``paper`` or ``cpu``) into ``out``."""
    out = Path(out)
    configs = package_path(PAPER, "configs")
    start = time.perf_counter()
    seed = (seeds or [0])[0]
    if scale == "paper":
        step1_cfg, step2_cfg = (
            configs / "paper" / "step1_chexpert_224.yaml",
            configs / "paper" / "step2_corda_fairkl_fold0.yaml",
        )
        root = Path(data_dir or "data")
        step1_over = [f"--data.init_args.data_dir={root / 'CheXpert-v1.0-small'}"]
        step2_over = [f"--data.init_args.data_dir={root / 'CORDA'}"]
        data = data_info("real", "CheXpert (step 1) + CORDA (step 2)", root)
        folds, n_boot = [0, 1, 2, 3], 1000
    else:
        step1_cfg, step2_cfg = configs / "cpu" / "step1_findings.yaml", configs / "cpu" / "step2_covid.yaml"
        step1_over = QUICK_STEP1 if quick else []
        step2_over = QUICK_STEP2 if quick else []
        data = data_info(
            "offline",
            "reprokit.cxr: CXR-like images on torchxrayvision's real lung masks, hospital styles as the bias",
        )
        folds, n_boot = ([0] if quick else [0, 1, 2, 3]), (200 if quick else 1000)
    common = [f"--seed_everything={seed}", NO_BAR]
    scale_key = scale_name(scale, quick)

    variants = QUICK_VARIANTS if quick else VARIANTS

    # ---- step 1: multi-label findings pretraining (only when a variant uses it)
    metrics: dict[str, float] = {}
    step1_ckpt = None
    if any(pretrained for _, _, pretrained in variants):
        print(f"[{PAPER}] step 1: findings pretraining", flush=True)
        s1 = fit_test(PAPER, step1_cfg, experiment=f"reproduce-{scale_key}-step1", overrides=[*step1_over, *common])
        step1_ckpt = s1["ckpt"]
        metrics.update(
            {"step1.test_auc": s1["test"].get("test/auc", float("nan")), "step1.fit_time_s": s1["fit_time_s"]}
        )

    # ---- step 2: k-fold fine-tuning per variant, predictions of every fold model on the test set
    dm = CovidDataModule(**_init_args(step2_cfg, step2_over))
    dm.setup("test")
    loader, majority = dm.test_dataloader(), dm.majority_label
    fold_models: dict[str, list] = {}
    runs = [(v, f) for v in variants for f in folds]
    for k, ((name, lam, pretrained), fold) in enumerate(runs, 1):
        print(f"[{PAPER}] step 2: {name} fold {fold} ({k}/{len(runs)})", flush=True)
        over = [*step2_over, *common, f"--data.init_args.fold={fold}", f"--model.init_args.fairkl_lambda={lam}"]
        over.append(f"--model.init_args.pretrained_ckpt={step1_ckpt if pretrained else 'null'}")
        res = fit_test(
            PAPER, step2_cfg, experiment=f"reproduce-{scale_key}-{name}-fold{fold}", overrides=over, test=False
        )
        model = CovidFineTuning.load_from_checkpoint(res["ckpt"], map_location="cpu", pretrained_ckpt=None)
        prob, y, g = _predict(model, loader)
        fold_models.setdefault(name, []).append((prob, model, res["fit_time_s"]))

    # ---- fold mean, fold ensemble, model soup
    rows = []
    for name, *_ in variants:
        fold_runs = fold_models[name]
        probs = [p for p, _, _ in fold_runs]
        singles = [grouped_metrics(p, y, g, HOSPITALS, majority) for p in probs]
        mean = {k: statistics.fmean(s[k] for s in singles) for k in singles[0]}
        combos = {"fold mean": mean, "ensemble": _summary(ensemble_probabilities(probs), y, g, majority, n_boot)}
        if len(fold_runs) > 1:
            souped = fold_runs[0][1]
            souped.load_state_dict(soup([m.state_dict() for _, m, _ in fold_runs]))
            combos["soup"] = _summary(_predict(souped, loader)[0], y, g, majority, n_boot)
        for combo, m in combos.items():
            prefix = f"{name}.{combo.replace(' ', '_')}."
            metrics.update({prefix + k.replace("/", "."): v for k, v in m.items()})
            rows.append({"variant": name, "model": combo, **{k.replace("/", "_"): v for k, v in m.items()}})
        metrics[f"{name}.fit_time_s"] = statistics.fmean(t for _, _, t in fold_runs)
    claims = {
        "claim.fairkl_gain_conflicting_acc": ("fairkl_scratch", "ce_scratch", "conflicting.acc"),
        "claim.fairkl_gain_conflicting_acc_pretrained": ("fairkl_pretrained", "ce_pretrained", "conflicting.acc"),
        "claim.pretraining_gain_bacc_ce": ("ce_pretrained", "ce_scratch", "all.bacc"),
        "claim.pretraining_gain_bacc_fairkl": ("fairkl_pretrained", "fairkl_scratch", "all.bacc"),
    }
    for claim, (a, b, key) in claims.items():
        if a in fold_models and b in fold_models:
            metrics[claim] = metrics[f"{a}.ensemble.{key}"] - metrics[f"{b}.ensemble.{key}"]
    wall = time.perf_counter() - start
    meta = run_metadata(
        seed=seed, config={"step1": str(step1_cfg), "step2": str(step2_cfg), "folds": folds}, wall_time_s=wall
    )
    columns = [("variant", "variant"), ("model", "model"), ("all_bacc", "BAcc"), ("all_bacc_lo", "BAcc lo"),
               ("all_bacc_hi", "BAcc hi"), ("all_auc", "AUC"), ("all_auc_lo", "AUC lo"), ("all_auc_hi", "AUC hi"),
               ("all_sens", "sens"), ("all_spec", "spec"), ("aligned_acc", "acc bias-aligned"),
               ("conflicting_acc", "acc bias-conflicting")]  # fmt: skip
    columns += [(f"{h}_bacc", f"BAcc {h}") for h in HOSPITALS]
    step1_note = f"Step 1 test macro-AUC {metrics['step1.test_auc']:.3f}. " if "step1.test_auc" in metrics else ""
    write_results(
        out, "step2_debiasing", paper=PAPER, scale=scale_key, data=data, metrics=metrics, rows=rows, columns=columns,
        title="corsa step 2: CE vs CE + FairKL, with and without step-1 pretraining (test set: hospital independent "
        "of the label)",
        notes=f"{step1_note}Fold mean: metrics averaged over the {len(folds)} fold models; ensemble: their averaged "
        "probabilities; soup: their averaged weights. CIs: 95% percentile bootstrap over test cases. Bias-aligned: "
        "the label is the hospital's majority label in the training pool. "
        f"Wall time {wall:.0f} s. Every number here is the {data['label']}.",
        meta=meta,
    )  # fmt: skip
    _plots(out, fold_models, y, rows, data)
    _reader_study(out, scale_key, seed, meta)
    print_check(out, package_path(PAPER, "expected"))


def _plots(out: Path, fold_models: dict, y: torch.Tensor, rows: list[dict], data: dict) -> None:
    from torchmetrics.functional.classification import binary_roc

    colors = {"ce_scratch": COLORS["baseline"], "fairkl_scratch": COLORS["method"],
              "ce_pretrained": COLORS["reference"], "fairkl_pretrained": COLORS["extra"]}  # fmt: skip
    fig, ax = figure(1, 2, width=4.0, height=3.4)
    for name, runs in fold_models.items():
        prob = ensemble_probabilities([p for p, _, _ in runs])
        fpr, tpr, _ = binary_roc(prob, y)
        ax[0, 0].plot(fpr, tpr, color=colors[name], label=name)
    ax[0, 0].plot([0, 1], [0, 1], ":", color="k", lw=0.8)
    ax[0, 0].set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (fold ensemble)")
    ax[0, 0].legend(fontsize=7)
    ens = [r for r in rows if r["model"] == "ensemble"]
    xs = range(len(ens))
    ax[0, 1].bar([x - 0.2 for x in xs], [r["aligned_acc"] for r in ens], 0.4, color=COLORS["baseline"], label="aligned")
    ax[0, 1].bar([x + 0.2 for x in xs], [r["conflicting_acc"] for r in ens], 0.4, color=COLORS["method"],
                 label="conflicting")  # fmt: skip
    ax[0, 1].set_xticks(list(xs), [r["variant"].replace("_", "\n") for r in ens], fontsize=7)
    ax[0, 1].set(ylabel="accuracy", ylim=(0, 1), title="bias-aligned vs bias-conflicting")
    ax[0, 1].legend(fontsize=7)
    fig.suptitle(data["label"], fontsize=8)
    save_png(fig, out / "step2_roc_bias.png")


def _reader_study(out: Path, scale_key: str, seed: int, meta: dict) -> None:
    reads = simulate_reads(seed=seed)
    reads.to_csv(out / "reader_study_simulated_reads.csv", index=False)
    clean, _ = load_reads(out / "reader_study_simulated_reads.csv")
    rows = analyse(clean)
    pooled = rows[-1]
    metrics = {f"pooled.{k}": v for k, v in pooled.items() if isinstance(v, int | float)}
    columns = [("reader", "reader"), ("sens_noai", "sens w/o AI"), ("sens_ai", "sens with AI"),
               ("spec_noai", "spec w/o AI"), ("spec_ai", "spec with AI"), ("acc_noai", "acc w/o AI"),
               ("acc_ai", "acc with AI"), ("acc_ai_lo", "acc AI lo"), ("acc_ai_hi", "acc AI hi"),
               ("mcnemar_p", "McNemar p"), ("median_time_s_noai", "median time w/o (s)"),
               ("median_time_s_ai", "median time with (s)"), ("wilcoxon_p", "Wilcoxon p")]  # fmt: skip
    write_results(
        out, "reader_study", paper=PAPER, scale=scale_key,
        data=data_info("offline", "simulated reads (corsa.reader_study.simulate_reads)", simulated=True),
        metrics=metrics, rows=rows, columns=columns,
        title="corsa clinical validation analysis on SIMULATED reads (not the paper's radiologists)",
        notes="Reads simulated from the model in corsa.reader_study (6 readers, 120 cases, AI sens 0.88 / spec 0.85, "
        "trust 0.6, time factor 0.85). McNemar: exact, on paired correctness; Wilcoxon: signed-rank on paired times; "
        "intervals: Wilson 95%.",
        meta=meta,
    )  # fmt: skip
    plot_reader_study(rows, clean, out / "reader_study.png", "SIMULATED reads — offline analogue")
