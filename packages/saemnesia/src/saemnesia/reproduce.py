"""SAEmnesia's protocol: base SAE vs supervised SAE for concept erasure, with search cost and sequential unlearning.

CPU scale (the offline analogue of UnlearnCanvas): toy-world classifiers and a tiny text-to-image model are trained
once and cached under ``runs/saemnesia/cache/<scale>/<stage>-<hash>/``; activations of ``up_blocks.1.attentions.1``
are cached from sampling; a base TopK SAE is trained on them, then fine-tuned with SAEmnesia's supervised loss. Each
object is erased with (a) the unsupervised selection (feature-score quantile x multiplier grid) on the base SAE and
(b) the single assigned latent of the supervised SAE (multiplier grid only). Parameters are chosen per object on one
sampling seed and reported on another.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from reprokit.cli import ReproError, fit_test, package_path, runs_root
from reprokit.data import split_indices
from reprokit.plotting import COLORS, figure, save_png
from reprokit.results import data_info, print_check, run_metadata, scale_name, write_results

from saemnesia.erasure import ConceptEraser, ErasureStack, feature_scores, select_by_quantile
from saemnesia.hooks import ActivationStore, ActivationWriter, capture
from saemnesia.lightning_module import ClassifierModule, SAEModule, TinyDiffusionModule
from saemnesia.metrics import UnlearningAccuracy, auroc, selection_score
from saemnesia.sae import topk_activation
from saemnesia.tiny_diffusion import SD_BLOCK, make_prompt, noise_schedulers
from saemnesia.toyworld import OBJECTS, STYLE_NAMES

PAPER = "saemnesia"


@dataclass(frozen=True)
class Settings:
    """Sizes of one CPU-scale run."""

    classifier_epochs: int
    diffusion_epochs: int
    diffusion_per_combo: int
    cache_seeds: int
    cache_every: int
    sae_epochs: int
    supervised_epochs: int
    objects: tuple[int, ...]
    multipliers: tuple[float, ...]
    quantiles: tuple[float, ...]
    eval_images: int
    steps: int = 25
    guidance: float = 2.0


QUICK = Settings(1, 1, 20, 1, 4, 1, 1, (0,), (-30.0,), (0.98, 0.995), 1, steps=8)
# One evaluation samples all 24 prompts with 25 DDIM steps (~4 s on 2 cores); the search makes ~120 of them, which is
# what the 20-minute budget leaves after the ~9 minutes of diffusion training.
FULL = Settings(
    8, 16, 100, 4, 1, 20, 60, tuple(range(len(OBJECTS))), (-1.0, -5.0, -15.0, -30.0), (0.98, 0.99, 0.995), 1
)


@dataclass(frozen=True)
class PaperProtocol:
    """The paper's generation and erasure protocol (UnlearnCanvas, SD1.5).

    Kept here rather than in ``configs/paper/``, which holds Lightning configs only (the SAE stages).
    """

    block: str = "up_blocks.1.attentions.1"  # objects; up_blocks.1.attentions.2 for styles
    steps: int = 100  # DDIM
    guidance: float = 9.0
    seed: int = 188
    objects: int = 20
    styles: int = 50
    multipliers: tuple[float, ...] = (-1.0, -5.0, -10.0, -15.0, -20.0, -25.0, -30.0)
    latent_subsets: int = 30  # the unsupervised selection's quantile grid


PAPER_PROTOCOL = PaperProtocol()


def _stage_key(parent: str, *parts) -> str:
    """Hash of a cached stage's inputs: its parent stage's key, its parsed config file and its settings.

    The YAML is hashed after parsing, so editing a comment or the layout does not retrain a cached stage.
    """
    digest = hashlib.sha256(parent.encode())
    for part in parts:
        if isinstance(part, Path):
            part = json.dumps(yaml.safe_load(part.read_text()), sort_keys=True, default=str)
        digest.update(repr(part).encode())
    return digest.hexdigest()[:10]


def _cached_fit(config: Path, cache: Path, name: str, overrides: list[str]) -> Path:
    """Train with the CLI unless ``cache/<name>.ckpt`` exists; returns the cached checkpoint."""
    target = cache / f"{name}.ckpt"
    if target.is_file():
        print(f"[{PAPER}] {name}: cached at {target}", flush=True)
        return target
    print(f"[{PAPER}] {name}: training ({config.name})", flush=True)
    result = fit_test(
        PAPER,
        config,
        experiment=f"cache-{name}",
        test=False,
        overrides=[*overrides, "--trainer.enable_progress_bar=false"],
    )
    tmp = target.with_suffix(".tmp")
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result["ckpt"], tmp)
    os.replace(tmp, target)
    return target


def prompt_grid(objects: range | tuple = tuple(range(len(OBJECTS))), per: int = 1):
    """Prompts for every (object, style) pair, ``per`` of each, with labels ``[n, 2]``."""
    prompts, labels = [], []
    for o in objects:
        for s in range(len(STYLE_NAMES)):
            for _ in range(per):
                prompts.append(make_prompt(OBJECTS[o], STYLE_NAMES[s]))
                labels.append((o, s))
    return prompts, torch.tensor(labels)


@torch.no_grad()
def cache_activations(diffusion, prompts, labels, root: Path, steps: int, guidance: float, seeds: int, every: int):
    """Sample ``prompts`` and store the conditional-half tokens of ``SD_BLOCK`` every ``every`` DDIM steps."""
    _, ddim = noise_schedulers()
    writer = ActivationWriter(root, chunk_items=256, label_names=("object", "style", "timestep"))
    for seed in range(seeds):
        with capture(diffusion.unet, SD_BLOCK) as store:
            diffusion.sample(prompts, ddim, steps=steps, guidance=guidance, seed=1000 + seed)
        for i, t in enumerate(ddim.timesteps.tolist()):
            if i % every == 0:
                lab = torch.cat([labels, torch.full((len(labels), 1), t)], dim=1)
                writer.append(store[i], lab)
    return writer.close()


@torch.no_grad()
def concept_stats(sae, store: ActivationStore) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean activation of every latent per object ``[n_obj, n]`` and over all tokens ``[n]``."""
    sums = torch.zeros(len(OBJECTS), sae.n_latents)
    counts = torch.zeros(len(OBJECTS), 1)
    for i in range(len(store)):
        acts, lab = store[i]
        z = topk_activation(sae.pre_acts(acts), sae.k).mean(0)
        sums[lab[0]] += z
        counts[lab[0]] += 1
    per_object = sums / counts.clamp_min(1)
    return per_object, per_object[counts.squeeze(1) > 0].mean(0)


@torch.no_grad()
def evaluate(diffusion, classifier, erased: list[int], erasers: list[ConceptEraser], settings: Settings, seed: int):
    """Generate every (object, style) prompt with the erasers hooked in and score UA/IRA/CRA."""
    prompts, labels = prompt_grid(per=settings.eval_images)
    _, ddim = noise_schedulers()
    handle = diffusion.unet.get_submodule(SD_BLOCK).register_forward_hook(ErasureStack(erasers)) if erasers else None
    try:
        images = diffusion.sample(prompts, ddim, steps=settings.steps, guidance=settings.guidance, seed=seed)
    finally:
        if handle is not None:
            handle.remove()
    obj_logits, sty_logits = classifier(images)
    metric = UnlearningAccuracy(erased)
    metric.update(obj_logits.argmax(1), labels[:, 0], sty_logits.argmax(1), labels[:, 1])
    return {k: float(v) for k, v in metric.compute().items()}, images


@torch.no_grad()
def latent_selectivity(sae, store: ActivationStore, latents: torch.Tensor, items: torch.Tensor) -> list[float]:
    """Held-out AUROC of each object's latent: its spatially pooled activation as a score for "the item shows it".

    Args:
        sae: The SAE.
        store: Activation store with labels ``(object, style, timestep)``.
        latents: ``[n_objects]`` the latent read for each object.
        items: Indices of the held-out items of ``store``.

    Returns:
        One AUROC per object (0.5: chance, 1: the latent's pooled activation separates its object perfectly).
    """
    pooled, objects = [], []
    for i in items.tolist():
        acts, lab = store[i]
        pooled.append(topk_activation(sae.pre_acts(acts), sae.k)[:, latents].mean(0))
        objects.append(int(lab[0]))
    pooled, objects = torch.stack(pooled), torch.tensor(objects)
    return [auroc(pooled[:, o], objects == o) for o in range(len(latents))]


def _finite_mean(values: list[float]) -> float:
    """Mean of the finite values (a quick run's held-out items can miss an object: its AUROC is nan)."""
    finite = [v for v in values if v == v]
    return statistics.fmean(finite) if finite else float("nan")


def _eraser(sae, latents, per_object, overall, obj, mult):
    return ConceptEraser(sae, latents, per_object[obj, latents], overall[latents], mult)


def run(scale: str, quick: bool, out: Path, data_dir: Path | None = None, seeds: list[int] | None = None) -> None:
    """Reproduce the SAEmnesia comparison at ``scale`` into ``out``."""
    if scale == "paper":
        raise ReproError(
            "paper scale needs the UnlearnCanvas fine-tune of Stable Diffusion 1.5, the UnlearnCanvas prompts and "
            "its ViT-L/16 object/style classifiers, none of which can be fetched here; this version reproduces the "
            "protocol on the offline analogue only (--scale cpu). The SAE stages run on SD1.5 activations through "
            "configs/paper/sae_*_sd15.yaml once a store is cached with saemnesia.reproduce.cache_activations."
        )
    settings = QUICK if quick else FULL
    key = scale_name(scale, quick)
    cfg = package_path(PAPER, "configs") / "cpu"
    # Every stage is keyed on its own config, its settings and the key of the stage it reads from, so editing one
    # config retrains that stage and those after it, and reuses the ones before it (the diffusion model is the
    # expensive one).
    root = runs_root() / PAPER / "cache" / key
    k_clf = _stage_key("", cfg / "classifier.yaml", settings.classifier_epochs)
    k_diff = _stage_key("", cfg / "diffusion.yaml", settings.diffusion_epochs, settings.diffusion_per_combo)
    k_acts = _stage_key(k_diff, settings.steps, settings.guidance, settings.cache_seeds, settings.cache_every)
    k_base = _stage_key(k_acts, cfg / "sae_base.yaml", settings.sae_epochs)
    k_sup = _stage_key(k_base, cfg / "sae_supervised.yaml", settings.supervised_epochs)
    start = time.perf_counter()
    out = Path(out)

    # 1-2. classifiers and the tiny text-to-image model (cached)
    clf_ckpt = _cached_fit(
        cfg / "classifier.yaml",
        root / f"classifier-{k_clf}",
        "classifier",
        [f"--trainer.max_epochs={settings.classifier_epochs}"],
    )
    diff_ckpt = _cached_fit(
        cfg / "diffusion.yaml",
        root / f"diffusion-{k_diff}",
        "diffusion",
        [
            f"--trainer.max_epochs={settings.diffusion_epochs}",
            f"--data.init_args.per_combo={settings.diffusion_per_combo}",
        ],
    )
    classifier = ClassifierModule.load_from_checkpoint(clf_ckpt, map_location="cpu").eval()
    diffusion = TinyDiffusionModule.load_from_checkpoint(diff_ckpt, map_location="cpu").ema.module.eval()

    # 3. activations of up_blocks.1.attentions.1 while sampling (conditional half only)
    store_dir = root / f"activations-{k_acts}"
    if not (store_dir / "index.json").is_file():
        print(f"[{PAPER}] caching activations of {SD_BLOCK}", flush=True)
        prompts, labels = prompt_grid()
        unstyled = [make_prompt(o) for o in OBJECTS]
        prompts += unstyled
        labels = torch.cat([labels, torch.stack([torch.arange(len(OBJECTS)), torch.full((len(OBJECTS),), -1)], 1)])
        cache_activations(
            diffusion,
            prompts,
            labels,
            store_dir,
            settings.steps,
            settings.guidance,
            settings.cache_seeds,
            settings.cache_every,
        )
    store = ActivationStore(store_dir)

    # 4-5. base SAE, then SAEmnesia's supervised fine-tuning
    common = [f"--data.init_args.data_dir={store_dir}"]
    base_ckpt = _cached_fit(
        cfg / "sae_base.yaml",
        root / f"sae_base-{k_base}",
        "sae_base",
        [*common, f"--trainer.max_epochs={settings.sae_epochs}"],
    )
    sup_ckpt = _cached_fit(
        cfg / "sae_supervised.yaml",
        root / f"sae_supervised-{k_sup}",
        "sae_supervised",
        [*common, f"--trainer.max_epochs={settings.supervised_epochs}", f"--model.init_args.init_from={base_ckpt}"],
    )
    base = SAEModule.load_from_checkpoint(base_ckpt, map_location="cpu").sae.eval()
    sup_module = SAEModule.load_from_checkpoint(sup_ckpt, map_location="cpu").eval()
    sup = sup_module.sae

    # 6. generation quality without erasure
    sel_seed, report_seed = 188, 189
    clean, clean_images = evaluate(diffusion, classifier, [], [], settings, report_seed)
    print(
        f"[{PAPER}] generation without erasure: object acc {clean['ira']:.3f}, style acc {clean['cra']:.3f}", flush=True
    )

    # 7. per-object parameter search (selection seed) and report (report seed)
    base_obj, base_all = concept_stats(base, store)
    sup_obj, sup_all = concept_stats(sup, store)
    # the baseline gets the same activity filter as SAEmnesia's assignment, so neither picks near-silent latents
    scores = feature_scores(base_obj, sup_module.hparams.min_activity)
    # selectivity of the latent each method leans on (SAEmnesia's assigned one; the baseline's top-scored one), on
    # the items the SAEs were validated on (the same split as ActivationDataModule's)
    _, held_out = split_indices(len(store), (0.9, 0.1), 0)
    selectivity = {
        "unsupervised": latent_selectivity(base, store, scores.argmax(1), held_out),
        "saemnesia": latent_selectivity(sup, store, sup_module.object_latents, held_out),
    }
    print(
        f"[{PAPER}] held-out AUROC of each object's latent: "
        + "; ".join(f"{n} " + " ".join(f"{a:.2f}" for a in v) for n, v in selectivity.items()),
        flush=True,
    )
    methods = {
        "unsupervised": lambda o, q, m: _eraser(base, select_by_quantile(scores[o], q), base_obj, base_all, o, m),
        "saemnesia": lambda o, q, m: _eraser(sup, sup_module.object_latents[o : o + 1], sup_obj, sup_all, o, m),
    }
    grids = {
        "unsupervised": [(q, m) for q in settings.quantiles for m in settings.multipliers],
        "saemnesia": [(None, m) for m in settings.multipliers],
    }
    chosen: dict[str, dict[int, tuple]] = {name: {} for name in methods}
    rows, evals = [], {name: 0 for name in methods}
    for name, make in methods.items():
        per_obj = []
        for o in settings.objects:
            best = None
            for q, m in grids[name]:
                res, _ = evaluate(diffusion, classifier, [o], [make(o, q, m)], settings, sel_seed)
                evals[name] += 1
                score = selection_score(res["ua"], res["ira"], res["cra"])
                if best is None or score > best[0]:
                    best = (score, q, m)
            chosen[name][o] = best[1:]
            res, _ = evaluate(diffusion, classifier, [o], [make(o, *best[1:])], settings, report_seed)
            per_obj.append(res)
            print(
                f"[{PAPER}] {name} erase {OBJECTS[o]}: UA {res['ua']:.2f} IRA {res['ira']:.2f} "
                f"CRA {res['cra']:.2f} (quantile {best[1]}, multiplier {best[2]})",
                flush=True,
            )
        mean = {k: statistics.fmean(r[k] for r in per_obj) for k in ("ua", "ira", "cra")}
        rows.append(
            {"method": name, **mean, "avg": statistics.fmean(mean.values()), "evals_per_object": len(grids[name])}
        )

    # 8. sequential unlearning: erase objects cumulatively with the chosen parameters
    seq = {name: [] for name in methods}
    for name, make in methods.items():
        for n in range(1, len(settings.objects) + 1):
            erased = list(settings.objects[:n])
            res, _ = evaluate(
                diffusion, classifier, erased, [make(o, *chosen[name][o]) for o in erased], settings, report_seed
            )
            seq[name].append(res)

    # 9. figures
    _grid_figure(diffusion, classifier, methods, chosen, settings, report_seed, clean_images, out / "erasure_grid.png")
    fig, ax = figure(1, 1, width=5, height=3.4)
    for name, color in (("unsupervised", COLORS["baseline"]), ("saemnesia", COLORS["method"])):
        ax[0, 0].plot(range(1, len(seq[name]) + 1), [r["ua"] for r in seq[name]], "o-", color=color, label=name)
    ax[0, 0].set(
        xlabel="objects erased",
        ylabel="UA (mean over erased)",
        ylim=(-0.02, 1.02),
        title="sequential unlearning — offline CPU-scale analogue",
    )
    ax[0, 0].legend()
    save_png(fig, out / "sequential_unlearning.png")

    # 10. results
    grid = {"multipliers": len(PAPER_PROTOCOL.multipliers), "latent_subsets": PAPER_PROTOCOL.latent_subsets}
    by = {r["method"]: r for r in rows}
    metrics = {f"{m}.{k}": by[m][k] for m in by for k in ("ua", "ira", "cra", "avg")}
    metrics |= {
        "generation.object_acc": clean["ira"],
        "generation.style_acc": clean["cra"],
        "search.saemnesia_evals": evals["saemnesia"],
        "search.unsupervised_evals": evals["unsupervised"],
        "search.reduction": 1 - evals["saemnesia"] / evals["unsupervised"],
        "search.paper_grid_reduction": 1 - grid["multipliers"] / (grid["multipliers"] * grid["latent_subsets"]),
        "sequential.saemnesia.ua_last": seq["saemnesia"][-1]["ua"],
        "sequential.unsupervised.ua_last": seq["unsupervised"][-1]["ua"],
        "ua_gain": by["saemnesia"]["ua"] - by["unsupervised"]["ua"],
        "selectivity.saemnesia.auroc": _finite_mean(selectivity["saemnesia"]),
        "selectivity.unsupervised.auroc": _finite_mean(selectivity["unsupervised"]),
        "avg_gain": by["saemnesia"]["avg"] - by["unsupervised"]["avg"],
    }
    notes = (
        f"Objects erased: {', '.join(OBJECTS[o] for o in settings.objects)}; multipliers {settings.multipliers}; "
        f"unsupervised quantiles {settings.quantiles}. Parameters chosen per object on sampling seed {sel_seed}, "
        f"reported on seed {report_seed}. Generation without erasure: object accuracy {clean['ira']:.3f}, style "
        f"accuracy {clean['cra']:.3f}. Search: SAEmnesia {evals['saemnesia']} evaluations vs unsupervised "
        f"{evals['unsupervised']} ({metrics['search.reduction']:.1%} fewer); the paper's grid (7 multipliers vs "
        f"30 subsets x 7) gives {metrics['search.paper_grid_reduction']:.2%} fewer.\n\nSequential unlearning (UA by "
        "number of objects erased): " + "; ".join(f"{n}: " + ", ".join(f"{r['ua']:.2f}" for r in seq[n]) for n in seq)
    )
    write_results(
        out,
        "unlearning",
        paper=PAPER,
        scale=key,
        data=data_info("offline", "toy UnlearnCanvas (6 objects x 4 styles, 16 px) + tiny text-to-image UNet"),
        metrics=metrics,
        rows=rows,
        columns=[
            ("method", "method"),
            ("ua", "UA"),
            ("ira", "IRA"),
            ("cra", "CRA"),
            ("avg", "avg"),
            ("evals_per_object", "search evals / object"),
        ],
        title="SAEmnesia vs unsupervised SAE selection — object erasure (offline CPU-scale analogue)",
        notes=notes,
        meta=run_metadata(
            seed=[sel_seed, report_seed],
            config=str(cfg),
            settings=settings.__dict__,
            wall_time_s=time.perf_counter() - start,
        ),
    )
    print_check(out, package_path(PAPER, "expected"))


@torch.no_grad()
def _grid_figure(diffusion, classifier, methods, chosen, settings, seed, clean_images, path: Path) -> None:
    """One row per setting (no erasure, each method erasing the first object): all prompts of that object."""
    import torchvision

    o = settings.objects[0]
    n_sty = len(STYLE_NAMES) * settings.eval_images
    rows = [clean_images[o * n_sty : (o + 1) * n_sty]]
    for name, make in methods.items():
        _, images = evaluate(diffusion, classifier, [o], [make(o, *chosen[name][o])], settings, seed)
        rows.append(images[o * n_sty : (o + 1) * n_sty])
    grid = torchvision.utils.make_grid(torch.cat(rows), nrow=n_sty, padding=1, pad_value=1.0)
    fig, ax = figure(1, 1, width=1.0 * n_sty, height=3.2)
    ax[0, 0].imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax[0, 0].set_yticks([9 + 18 * i for i in range(3)], ["no erasure", "unsupervised", "SAEmnesia"])
    ax[0, 0].set_xticks([])
    ax[0, 0].set_title(f"erasing '{OBJECTS[o]}' (offline CPU-scale analogue)")
    ax[0, 0].grid(False)
    save_png(fig, path)
