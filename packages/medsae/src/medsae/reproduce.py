"""MedSAE's protocol: SAEs on image embeddings vs the raw embedding dimensions, the sweep, naming and galleries.

``scale="cpu"``: the offline CPU-scale analogue. (1) Train the small image encoder on ``reprokit.cxr`` images with
exact findings (``configs/cpu/encoder.yaml``, the stand-in for MedCLIP pre-training). (2) Train every SAE variant on
its embeddings (``configs/cpu/sae_*.yaml``) and the sweep over dictionary size and k that ``configs/cpu/sweep.yaml``
declares (each point a normal run, resumable, see :mod:`medsae.sweep`; ``--quick`` keeps the smallest dictionary and
every other k; ``--seeds`` applies to the variants, the sweep keeps its grid's seeds). (3) Dissect SAE latents and
raw dimensions on the held-out images (monosemanticity, correlation, entropy, firing F1, rank-normalised scores).
(4) Name the final SAE's alive latents (L0 > 60) with the offline :class:`~medsae.naming.LabelNamer`, evaluate the
names as classifiers, and draw galleries of top-activating images.

``scale="paper"``: the same on MedCLIP-RN50 embeddings of CheXpert (``configs/paper``; ``--data_dir`` holds
``CheXpert-v1.0-small/`` and ``medclip/pytorch_model.bin``, checked before any work starts), the sweep of
``configs/paper/sweep.yaml``, naming with MedGemma through transformers.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch
from reprokit.cli import fit_test, package_path
from reprokit.plotting import COLORS, figure, save_png
from reprokit.results import data_info, print_check, run_metadata, scale_name, write_results

from medsae.analysis import dissect
from medsae.data import require_paper_inputs
from medsae.metrics import rank_normalised
from medsae.naming import LabelNamer, NamingError, VLMNamer, evaluate_names, name_latents
from medsae.sweep import SweepPoint, expand, plot_frontier, run_sweep, write_sweep_results

PAPER = "medsae"
VARIANTS = ("standard", "april", "topk", "batchtopk", "matryoshka")
FINAL = "topk"
#: The VLM that names latents at paper scale; ``$MEDSAE_NAMER_MODEL`` (a hub id or local folder) replaces it.
NAMER_ENV, DEFAULT_NAMER = "MEDSAE_NAMER_MODEL", "google/medgemma-4b-it"
QUICK = {"n_images": 1500, "encoder_epochs": 2, "sae_epochs": 15, "variants": ("standard", "topk", "matryoshka")}
FULL = {"n_images": 6000, "encoder_epochs": 10, "sae_epochs": 60, "variants": VARIANTS}


def _log(msg: str) -> None:
    print(f"[{PAPER}] {msg}", flush=True)


def _quiet() -> list[str]:
    return ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@torch.no_grad()
def _latents(module, x: torch.Tensor) -> torch.Tensor:
    module.eval()
    return torch.cat([module.sae.encode(x[i : i + 4096]) for i in range(0, len(x), 4096)])


def quick_points(points: list[SweepPoint]) -> list[SweepPoint]:
    """The quick protocol's share of a sweep: the smallest dictionary and every other k (4 and 16 on the CPU grid)."""
    smallest = min(p.d_sae for p in points)
    ks = sorted({p.k for p in points})[::2]
    return [p for p in points if p.d_sae == smallest and p.k in ks]


def run(scale: str, quick: bool, out: Path, data_dir: Path | None = None, seeds: list[int] | None = None) -> None:
    """Reproduce the paper's comparison at ``scale`` (``paper`` or ``cpu``) into ``out``."""
    start, cpu_start = time.perf_counter(), time.process_time()
    out = Path(out)
    configs = package_path(PAPER, "configs")
    seeds = seeds or [0]
    setting = QUICK if quick else FULL
    tag = scale_name(scale, quick)
    if scale == "paper":
        data_dir = Path(data_dir or "data")
        require_paper_inputs(data_dir)  # one clear line now, not after the first run has started
        data_over = [
            f"--data.init_args.data_dir={data_dir / 'CheXpert-v1.0-small'}",
            f"--data.init_args.encoder_ckpt={data_dir / 'medclip' / 'pytorch_model.bin'}",
        ]
        sae_cfg = configs / "paper"
        variants = VARIANTS
        data = data_info("real", "CheXpert (MedCLIP-RN50 embeddings)", data_dir)
    else:
        n = setting["n_images"]
        _log(f"1/4 offline encoder on {n} CXR-like images ({setting['encoder_epochs']} epochs)")
        enc = fit_test(
            PAPER,
            configs / "cpu" / "encoder.yaml",
            experiment=f"reproduce-{tag}-encoder",
            overrides=[
                f"--data.init_args.n_images={n}",
                f"--trainer.max_epochs={setting['encoder_epochs']}",
                f"--seed_everything={seeds[0]}",
                *_quiet(),
            ],
        )
        _log(f"   encoder test retrieval accuracy {enc['test'].get('test/match_acc', float('nan')):.3f}")
        data_over = [f"--data.init_args.encoder_ckpt={enc['ckpt']}", f"--data.init_args.n_images={n}"]
        data_over.append(f"--trainer.max_epochs={setting['sae_epochs']}")
        sae_cfg = configs / "cpu"
        variants = setting["variants"]
        data = data_info("offline", "reprokit.cxr CXR-like images (8 exact findings), small CLIP-style encoder", n=n)

    # ---------------------------------------------------------------------------------------------- 2. SAEs
    fits: dict[str, list[dict]] = {}
    for i, variant in enumerate(variants, 1):
        for seed in seeds:
            _log(f"2/4 SAE {variant} seed {seed} ({i}/{len(variants)})")
            res = fit_test(
                PAPER,
                sae_cfg / f"sae_{variant}.yaml",
                experiment=f"reproduce-{tag}-{variant}-seed{seed}",
                overrides=[*data_over, f"--seed_everything={seed}", f"--model.init_args.sae_seed={seed}", *_quiet()],
                test=False,
            )
            fits.setdefault(variant, []).append(res)
    sweep_cfg = sae_cfg / "sweep.yaml"
    points = expand(sweep_cfg)
    points = quick_points(points) if quick else points
    _log(f"2/4 sweep {sweep_cfg.name}: {len(points)} runs")
    sweep_rows = run_sweep(
        sweep_cfg, name=f"reproduce-{tag}-sweep", points=points, overrides=[*data_over, *_quiet()], log=_log
    )

    # ------------------------------------------------------------------------------------------- 3. dissection
    _log("3/4 dissection: SAE latents vs raw embedding dimensions")
    dm = fits[variants[0]][0]["cli"].datamodule
    test = dm.split_tensors("test")
    x, y = test["x"], test["y"]
    labels = list(dm.label_names)
    per_model: dict[str, dict] = {"raw": dissect(x, x, y, l0_filter=None)}
    sae_stats: dict[str, dict] = {}
    for variant, runs in fits.items():
        results = []
        for res in runs:
            module = res["cli"].model
            f = _latents(module, x)
            with torch.no_grad():
                x_hat = module.sae.decode(f)
            row = dissect(f, x, y)
            row["l0"] = float((f != 0).sum(1).double().mean())
            row["fvu"] = float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
            row["dead_frac"] = float(((f != 0).sum(0) == 0).double().mean())
            results.append(row)
        per_model[variant] = results[0]
        sae_stats[variant] = {
            k: statistics.fmean(r[k] for r in results)
            for k in results[0]
            if isinstance(results[0][k], float | int) and not isinstance(results[0][k], bool)
        }
    ranks_corr = rank_normalised({m: r["top_corr"] for m, r in per_model.items()})
    ranks_ent = rank_normalised({m: r["top_entropy"] for m, r in per_model.items()}, higher_is_better=False)

    keys = ("mono_mean", "mono_median", "mono_defined", "alive", "alive_frac", "top_corr_mean", "top_entropy_mean")
    keys += ("f1_mean", "f1_units")
    rows, metrics = [], {}
    for model, r in per_model.items():
        stats = sae_stats.get(model, r)
        row = {"model": "raw embedding" if model == "raw" else f"SAE {model}", "units": len(r["mono"])}
        row |= {k: stats[k] for k in keys}
        row |= {"rank_corr": ranks_corr[model], "rank_entropy": ranks_ent[model]}
        row |= {k: stats.get(k) for k in ("l0", "fvu", "dead_frac")}
        rows.append(row)
        for k, v in row.items():
            if isinstance(v, float | int) and v is not None and k != "units":
                metrics[f"{model}.{k}"] = float(v)
    raw = per_model["raw"]
    sae_names = list(fits)
    metrics["claim.mono_gain_min"] = min(sae_stats[m]["mono_mean"] - raw["mono_mean"] for m in sae_names)
    metrics["claim.entropy_drop_min"] = min(
        raw["top_entropy_mean"] - sae_stats[m]["top_entropy_mean"] for m in sae_names
    )
    metrics["claim.rank_entropy_gain_min"] = min(ranks_ent[m] - ranks_ent["raw"] for m in sae_names)
    per_class_rows = []
    for c, name in enumerate(labels):
        pc = {"label": name}
        for model, r in per_model.items():
            pc[f"{model}_corr"] = float(r["top_corr"][c])
            pc[f"{model}_entropy"] = float(r["top_entropy"][c])
        per_class_rows.append(pc)

    # -------------------------------------------------------------------------------------- 4. naming + gallery
    final = FINAL if FINAL in fits else sae_names[0]
    _log(f"4/4 naming the {final} SAE's alive latents (L0 > 60) and evaluating the names")
    module = fits[final][0]["cli"].model
    f = _latents(module, x)
    l0 = (f > 0).sum(0)
    corr = per_model[final]["corr"].nan_to_num(0.0).abs()
    alive = (corr.max(1).values > 0.2) & (l0 > 60)
    units = alive.nonzero().flatten()
    units = units[corr[units].max(1).values.argsort(descending=True)][: 12 if quick else 48].tolist()
    images = _image_source(dm, test["index"])
    if scale == "paper":  # pragma: no cover - needs MedGemma weights and a GPU
        from medsae.naming import TransformersChat

        # The shared `reproduce` command line has no namer option: the model id comes from the environment.
        namer = VLMNamer(TransformersChat(os.environ.get(NAMER_ENV, DEFAULT_NAMER)))
    else:
        namer = LabelNamer(labels, y.mean(0))
    named = name_latents(f, units, namer, images, y)
    ok = {k: v for k, v in named.items() if not isinstance(v, NamingError)}
    scores = evaluate_names(f, ok, namer, images, y)
    naming_rows = [{"latent": k, "concept": v.concept, **scores.get(k, {}), "l0": int(l0[k])} for k, v in ok.items()]
    metrics["naming.named"] = float(len(ok))
    metrics["naming.failed"] = float(len(named) - len(ok))
    for key in ("precision", "recall", "f1"):
        vals = [s[key] for s in scores.values()]
        metrics[f"naming.{key}_mean"] = statistics.fmean(vals) if vals else float("nan")

    wall = time.perf_counter() - start
    meta = run_metadata(
        seed=seeds,
        config=str(sae_cfg),
        wall_time_s=wall,
        cpu_time_s=time.process_time() - cpu_start,
        variants=list(variants),
    )
    out.mkdir(parents=True, exist_ok=True)
    cols = [("model", "units"), ("units", "#"), ("mono_mean", "MS mean"), ("mono_median", "MS median")]
    cols += [("alive", "alive"), ("top_corr_mean", "top |r| (mean/class)"), ("top_entropy_mean", "H of top")]
    cols += [("f1_mean", "best F1 (mean/class)"), ("f1_units", "F1 units"), ("rank_corr", "rank |r|")]
    cols += [("rank_entropy", "rank H"), ("l0", "L0"), ("fvu", "FVU"), ("dead_frac", "dead")]
    note = (
        "MS: monosemanticity score over units with a defined score; alive: max |r| > 0.2; top |r| / H: per label the "
        "most correlated unit's |Pearson r| and its label entropy, averaged over labels; best F1: per label the best "
        "firing F1 among units with 15 < L0 < 300 (raw dimensions: all), averaged; rank: rank-normalised over models "
        "(1 = best on every label). Evaluated on the held-out test split."
    )
    write_results(
        out,
        "medsae_table",
        paper=PAPER,
        scale=tag,
        data=data,
        metrics=metrics,
        rows=rows,
        columns=cols,
        title="MedSAE: SAE latents vs raw embedding dimensions",
        notes=note,
        meta=meta,
    )
    write_results(
        out,
        "medsae_per_class",
        paper=PAPER,
        scale=tag,
        data=data,
        metrics={
            f"{m}.top_corr.{lab}": float(r["top_corr"][c]) for m, r in per_model.items() for c, lab in enumerate(labels)
        },
        rows=per_class_rows,
        columns=["label"] + [f"{m}_{s}" for m in per_model for s in ("corr", "entropy")],
        title="Per label: most correlated unit's |r| and its entropy",
        meta=meta,
    )
    write_sweep_results(out, sweep_rows, scale=tag, data=data, meta=meta)
    write_results(
        out,
        "medsae_naming",
        paper=PAPER,
        scale=tag,
        data=data,
        metrics={k: v for k, v in metrics.items() if k.startswith("naming.")},
        rows=naming_rows,
        columns=[
            ("latent", "latent"),
            ("concept", "concept"),
            ("l0", "L0"),
            ("precision", "P"),
            ("recall", "R"),
            ("f1", "F1"),
        ],
        title=f"Naming of the {final} SAE's latents ({type(namer).__name__}) and its evaluation",
        meta=meta,
    )
    _figures(out, rows, sweep_rows, per_model, labels, data)
    _gallery(out, f, ok, images, data)
    _log(f"done in {wall:.0f} s -> {out}")
    print_check(out, package_path(PAPER, "expected"))


def _image_source(dm, rows: torch.Tensor):
    """``positions in the analysis split -> images [n, 1, S, S]`` for naming and galleries."""
    hp = dm.hparams
    if hp.source == "offline":
        from medsae.data import offline_images

        def render(idx: torch.Tensor) -> torch.Tensor:
            return torch.cat([offline_images(1, hp.image_size, hp.data_seed, int(rows[i]))[0] for i in idx])

        return render
    from medsae.data import CheXpertImages, read_chexpert_csv  # pragma: no cover - real data only

    paths, labels = read_chexpert_csv(Path(hp.data_dir), uncertain=hp.uncertain)
    ds = CheXpertImages(paths, labels, hp.image_size)
    from medsae.encoder import MEDCLIP_MEAN, MEDCLIP_STD

    return lambda idx: torch.stack([ds[int(rows[i])][0] * MEDCLIP_STD + MEDCLIP_MEAN for i in idx])


def _figures(out: Path, rows, sweep_rows, per_model, labels, data) -> None:
    fig, axes = figure(1, 3, width=4.2)
    names = [r["model"].replace("SAE ", "") for r in rows]
    colors = [COLORS["baseline"] if r["model"] == "raw embedding" else COLORS["method"] for r in rows]
    axes[0, 0].bar(names, [r["mono_mean"] for r in rows], color=colors)
    axes[0, 0].set(ylabel="monosemanticity (mean)", title="higher = more monosemantic")
    axes[0, 1].bar(names, [r["top_entropy_mean"] for r in rows], color=colors)
    axes[0, 1].set(ylabel="label entropy of top unit (mean)", title="lower = more specific")
    for ax in axes[0, :2]:
        ax.tick_params(axis="x", rotation=45)
    plot_frontier(axes[0, 2], sweep_rows)
    fig.suptitle(f"{data['name']} — {data['label']}", fontsize=9)
    save_png(fig, out / "medsae_table.png")

    fig, axes = figure(1, 1, width=7)
    ax = axes[0, 0]
    models = list(per_model)
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        color = COLORS["baseline"] if m == "raw" else None
        ax.bar(
            [c + i * width for c in range(len(labels))], per_model[m]["top_corr"].tolist(), width, label=m, color=color
        )
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(labels))], labels, rotation=45, ha="right")
    ax.set(ylabel="|r| of the most correlated unit", title=f"per label — {data['label']}")
    ax.legend(fontsize=7)
    save_png(fig, out / "medsae_per_class.png")


def _gallery(out: Path, f: torch.Tensor, named: dict, images, data, n_units: int = 6, n_images: int = 6) -> None:
    units = list(named)[:n_units]
    if not units:
        return
    fig, axes = figure(len(units), n_images, width=1.3, height=1.45)
    for r, k in enumerate(units):
        idx = f[:, k].argsort(descending=True)[:n_images]
        imgs = images(idx)
        for c in range(n_images):
            ax = axes[r, c]
            ax.imshow(imgs[c, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        axes[r, 0].set_title(f"#{k}: {named[k].concept}", fontsize=7, loc="left")
    fig.suptitle(f"top-activating images per named latent — {data['label']}", fontsize=8)
    save_png(fig, out / "medsae_gallery.png")
