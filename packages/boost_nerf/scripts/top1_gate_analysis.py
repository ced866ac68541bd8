r"""Why does Top-1 fall below its single-expert baseline? Gate confidence and renormalised Top-1 on trained models.

Reads the checkpoints of a finished ``boost_nerf reproduce --scale cpu`` run (``--runs``: the folder holding
``cpu-<backbone>-top1/`` etc.) and, per backbone, on the test views:

- the distribution of the top-1 gate probability ``p`` on the points that pass the filter (mean, quartiles), and
  the share of points per expert;
- the PSNR of the same Top-1 checkpoint rendered four ways, without retraining: the released code's blend
  (``p * rgb``, ``p * alpha``), renormalised (weight 1 for both), and renormalised colour only / alpha only, which
  separates the two ways a ``p < 1`` weight dims a sample;
- the mean signed colour error (render minus ground truth) and mean opacity, which show the dimming directly;
- each jointly trained expert rendering every kept point alone (weight 1), and each stage-1 expert alone: whether
  the experts themselves or their per-point mixing lose the quality.

``--retrain ngp,tensorf`` also retrains the Top-1 joint stage from the same stage-1 checkpoints with
``renormalize_top1=true`` (same steps, seed and overrides as ``reproduce``) and reports its validation- and
test-view PSNR; no choice is made on test views. Run it through the shared gate (``heavy -1``): each retrain is one
200-step fit. ``--control ngp`` refits without the switch (it must reproduce the original run: the fit is
deterministic); ``--finest ngp`` refits Top-1 (raw p) with every expert started from the finest stage-1 expert.
Writes ``top1_gate_analysis.json`` into ``--out``.

    heavy -1 env OMP_NUM_THREADS=1 .venv/bin/python packages/boost_nerf/scripts/top1_gate_analysis.py \
        --runs runs/boost_nerf --out runs/boost_nerf_top1 --retrain dvgo,tensorf,ngp --control ngp --finest ngp
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml
from boost_nerf.data import SceneDataModule
from boost_nerf.encoding import raw_to_alpha
from boost_nerf.gate import top_k_routing
from boost_nerf.lightning_module import BoostNeRFModule
from boost_nerf.metrics import psnr
from boost_nerf.moe import dispatch
from reprokit.cli import fit_test, package_path

#: (colour weight, alpha weight) per variant: "p" is the raw top-1 probability, "1" the renormalised weight.
VARIANTS = {"raw": ("p", "p"), "renorm": ("1", "1"), "renorm_rgb_only": ("1", "p"), "renorm_alpha_only": ("p", "1")}


def _ckpt(run_dir: Path) -> Path:
    found = sorted((run_dir / "version_0" / "checkpoints").glob("*.ckpt"))
    if not found:
        raise FileNotFoundError(f"no checkpoint under {run_dir}/version_0/checkpoints (run reproduce first)")
    return found[-1]


def _datamodule(run_dir: Path) -> SceneDataModule:
    config = yaml.safe_load((run_dir / "version_0" / "config.yaml").read_text())
    dm = SceneDataModule(**config["data"]["init_args"])
    dm.prepare_data()
    dm.setup("test")
    return dm


def _blend_variant(model, rgb_w: str, alpha_w: str):
    """A replacement for ``BoostNeRF._blend`` in Top-1 mode weighting colour and alpha separately (``"p"``/``"1"``)."""

    def blend(x: torch.Tensor, d: torch.Tensor):
        probs = torch.softmax(model.gate(x, d), -1)
        raw_w, index = top_k_routing(probs, 1)
        one_w, _ = top_k_routing(probs, 1, renormalize_top1=True)
        w_rgb, w_alpha = (raw_w if rgb_w == "p" else one_w), (raw_w if alpha_w == "p" else one_w)
        rgb, _, counts = dispatch(model.experts, x, d, w_rgb, index, model.act_shift, model.interval)
        if w_alpha is w_rgb:
            _, alpha, _ = dispatch(model.experts, x, d, w_alpha, index, model.act_shift, model.interval)
        else:  # the experts again, with the other weights (analysis only: doubles the work)
            alpha = x.new_zeros(len(x))
            for e, expert in enumerate(model.experts):
                sel = (index[:, 0] == e).nonzero().squeeze(1)
                if len(sel):
                    a = raw_to_alpha(expert(x[sel], d[sel])[1], model.act_shift, model.interval)
                    alpha = alpha.index_add(0, sel, w_alpha[sel, e] * a)
        return rgb, alpha, probs, counts

    return blend


def _blend_alone(model, e: int):
    """A replacement for ``BoostNeRF._blend`` that sends every kept point to expert ``e`` with weight 1."""

    def blend(x: torch.Tensor, d: torch.Tensor):
        weights = x.new_zeros(len(x), len(model.experts))
        weights[:, e] = 1.0
        index = torch.full((len(x), 1), e, dtype=torch.long, device=x.device)
        rgb, alpha, counts = dispatch(model.experts, x, d, weights, index, model.act_shift, model.interval)
        return rgb, alpha, torch.softmax(model.gate(x, d), -1), counts

    return blend


def alone_psnrs(module: BoostNeRFModule, dm: SceneDataModule) -> list[float]:
    """Test PSNR of each jointly trained expert rendering every kept point alone (the mixture's filter unchanged)."""
    original, psnrs = module.model._blend, []
    for e in range(len(module.model.experts)):
        module.model._blend = _blend_alone(module.model, e)
        psnrs.append(evaluate_views(module, dm)["psnr"])
    module.model._blend = original
    return psnrs


@torch.no_grad()
def evaluate_views(module: BoostNeRFModule, dm: SceneDataModule) -> dict[str, object]:
    """Per-view renders of the test split: PSNR, signed colour error, opacity, and gate stats of the kept points.

    Returns:
        ``psnr``, ``bias`` (mean render - target), ``opacity`` (mean), ``top1_prob`` (all kept points' top-1
        probabilities, ``[P]``) and ``expert`` (their chosen experts, ``[P]``; empty in single mode).
    """
    module.eval()
    rays = dm.test_set.rays
    psnrs, bias, opacity, probs = [], [], [], []
    for i in range(len(rays["rgb"])):
        out = module.model.render_rays(rays["origins"][i].reshape(-1, 3), rays["dirs"][i].reshape(-1, 3))
        target = rays["rgb"][i].reshape(-1, 3)
        psnrs.append(float(psnr(out["rgb"], target)))
        bias.append(float((out["rgb"] - target).mean()))
        opacity.append(float(out["opacity"].mean()))
        probs.append(out["probs"])
    probs = torch.cat(probs)
    top = probs.max(-1) if probs.shape[-1] else (torch.empty(0), torch.empty(0, dtype=torch.long))
    n = len(psnrs)
    return {
        "psnr": sum(psnrs) / n,
        "bias": sum(bias) / n,
        "opacity": sum(opacity) / n,
        "top1_prob": top[0],
        "expert": top[1],
    }


def _gate_stats(p: torch.Tensor, expert: torch.Tensor, m: int) -> dict[str, object]:
    q = torch.quantile(p, torch.tensor([0.25, 0.5, 0.75])).tolist()
    return {
        "points": len(p),
        "p_mean": float(p.mean()),
        "p_q25_q50_q75": q,
        "p_below_0.5": float((p < 0.5).float().mean()),
        "share_per_expert": (torch.bincount(expert, minlength=m).float() / len(expert)).tolist(),
        "p_mean_per_expert": [float(p[expert == e].mean()) if (expert == e).any() else None for e in range(m)],
    }


def analyse(runs: Path, backbone: str) -> dict[str, object]:
    """Gate statistics and the four Top-1 blends of one backbone's trained Top-1 model, plus its baseline."""
    run = runs / f"cpu-{backbone}-top1"
    dm = _datamodule(run)
    result: dict[str, object] = {"checkpoint": str(_ckpt(run))}
    base = BoostNeRFModule.load_from_checkpoint(_ckpt(runs / f"cpu-{backbone}-expert48"), map_location="cpu")
    ev = evaluate_views(base, dm)
    result["baseline"] = {k: ev[k] for k in ("psnr", "bias", "opacity")}
    module = BoostNeRFModule.load_from_checkpoint(_ckpt(run), map_location="cpu")
    original = module.model._blend
    for name, (rgb_w, alpha_w) in VARIANTS.items():
        module.model._blend = _blend_variant(module.model, rgb_w, alpha_w)
        ev = evaluate_views(module, dm)
        result[name] = {k: ev[k] for k in ("psnr", "bias", "opacity")}
        if name == "raw":
            result["gate"] = _gate_stats(ev["top1_prob"], ev["expert"], len(module.model.experts))
    module.model._blend = original
    result["alone"] = alone_psnrs(module, dm)
    result["stage1_alone"] = [
        evaluate_views(BoostNeRFModule.load_from_checkpoint(_ckpt(runs / f"cpu-{backbone}-expert{r}")), dm)["psnr"]
        for r in module.hparams.expert_resolutions
    ]
    # The module's own path must agree with the "raw" variant (a check that the replacement blend is faithful).
    result["raw_via_module"] = evaluate_views(module, dm)["psnr"]
    return result


def retrain(runs: Path, backbone: str, renormalize: bool = True, finest_only: bool = False) -> dict[str, object]:
    """Top-1 joint stage again from the same stage-1 checkpoints, with ``renormalize_top1`` set to ``renormalize``.

    ``renormalize=False`` is the control: the original run again (the fit is deterministic on CPU, so it should
    reproduce the original checkpoint's numbers, showing that a difference comes from the switch).
    ``finest_only`` starts every expert from the finest stage-1 checkpoint (experts all at the finest resolution):
    Top-1 without weak coarse experts, the same gate, steps and seed.
    """
    config = yaml.safe_load((runs / f"cpu-{backbone}-top1" / "version_0" / "config.yaml").read_text())
    init = config["model"]["init_args"]
    experts = init["expert_checkpoints"]
    if finest_only:
        experts = [experts[-1]] * len(experts)
        res = init["expert_resolutions"][-1]
        finest = [f"--model.init_args.expert_resolutions=[{','.join([str(res)] * len(experts))}]"]
    else:
        finest = []
    overrides = [
        "--trainer.enable_progress_bar=false",
        "--trainer.limit_val_batches=1",
        f"--seed_everything={config['seed_everything']}",
        f"--trainer.max_steps={config['trainer']['max_steps']}",
        f"--model.init_args.expert_checkpoints=[{','.join(experts)}]",
        f"--model.init_args.gate_checkpoint={init['gate_checkpoint']}",
        f"--model.init_args.renormalize_top1={str(renormalize).lower()}",
        *finest,
    ]
    cfg = package_path("boost_nerf", "configs") / "cpu" / f"{backbone}_top1.yaml"
    wall, cpu = time.perf_counter(), time.process_time()
    result = fit_test(
        "boost_nerf",
        cfg,
        experiment=f"cpu-{backbone}-top1-{'renorm' if renormalize else 'raw'}{'-finest' if finest_only else ''}",
        overrides=overrides,
        test=False,
    )
    fit_wall, fit_cpu = time.perf_counter() - wall, time.process_time() - cpu
    module = result["cli"].model
    ev = evaluate_views(module, _datamodule(runs / f"cpu-{backbone}-top1"))
    return {
        "checkpoint": result["ckpt"],
        "val_psnr": result["fit"].get("val/psnr"),
        "test": {k: ev[k] for k in ("psnr", "bias", "opacity")},
        "gate": _gate_stats(ev["top1_prob"], ev["expert"], len(module.model.experts)),
        "alone": alone_psnrs(module, _datamodule(runs / f"cpu-{backbone}-top1")),
        "fit_wall_s": fit_wall,
        "fit_cpu_s": fit_cpu,
    }


def _val_psnr(run_dir: Path) -> float | None:
    """Last validation PSNR logged by a fit (``metrics.csv``)."""
    lines = (run_dir / "version_0" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    if "val/psnr" not in header:
        return None
    col = header.index("val/psnr")
    values = [row.split(",")[col] for row in lines[1:] if row.split(",")[col]]
    return float(values[-1]) if values else None


def main() -> None:
    """Command line: analyse the backbones, optionally retrain (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/boost_nerf"))
    parser.add_argument("--out", type=Path, default=Path("runs/boost_nerf_top1"))
    parser.add_argument("--backbones", default="dvgo,tensorf,ngp")
    parser.add_argument("--retrain", default="", help="backbones to retrain with renormalize_top1=true")
    parser.add_argument("--finest", default="", help="backbones to retrain (raw p) with every expert the finest one")
    parser.add_argument("--control", default="", help="backbones to retrain with the default (raw p), as a control")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report: dict[str, object] = {}
    for backbone in args.backbones.split(","):
        start = time.perf_counter()
        report[backbone] = analyse(args.runs, backbone)
        report[backbone]["top1_val_psnr"] = _val_psnr(args.runs / f"cpu-{backbone}-top1")
        report[backbone]["analysis_wall_s"] = time.perf_counter() - start
        print(backbone, json.dumps(report[backbone], indent=1), flush=True)
    for backbone in filter(None, args.retrain.split(",")):
        report[backbone]["retrained_renorm"] = retrain(args.runs, backbone)
        print(backbone, "retrained", json.dumps(report[backbone]["retrained_renorm"], indent=1), flush=True)
    for backbone in filter(None, args.control.split(",")):
        report[backbone]["retrained_raw_control"] = retrain(args.runs, backbone, renormalize=False)
        print(backbone, "control", json.dumps(report[backbone]["retrained_raw_control"], indent=1), flush=True)
    for backbone in filter(None, args.finest.split(",")):
        report[backbone]["retrained_raw_finest_only"] = retrain(
            args.runs, backbone, renormalize=False, finest_only=True
        )
        print(backbone, "finest", json.dumps(report[backbone]["retrained_raw_finest_only"], indent=1), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "top1_gate_analysis.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
