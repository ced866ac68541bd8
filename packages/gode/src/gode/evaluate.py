"""Evaluation outside the training loop: metrics of any subset of a trained model, render timing, render strips."""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.data import Dataset

from gode.gaussians import activate
from gode.lightning_module import GoDeModule
from gode.metrics import lpips, psnr, ssim
from gode.quant import quantize_params


def subset_params(module: GoDeModule, idx: torch.Tensor, quantize: bool = True) -> dict[str, torch.Tensor]:
    """Render-ready parameters of Gaussians ``idx`` (quantised with the ranges of the stored model)."""
    raw = {k: v.detach() for k, v in module.gaussians.raw().items()}
    if quantize:
        raw, _ = quantize_params(raw, mask=module.level_of >= 0, fake=False)
    return {k: v[idx] for k, v in activate(raw).items()}


@torch.no_grad()
def evaluate(module: GoDeModule, params: dict[str, torch.Tensor], views: Dataset) -> dict[str, float]:
    """Mean PSNR, SSIM and LPIPS (nan without its weights offline) of ``params`` rendered into every view."""
    scores: dict[str, list[float]] = {"psnr": [], "ssim": [], "lpips": []}
    for i in range(len(views)):
        view = views[i]
        out = module.render_params(params, view)
        scores["psnr"].append(float(psnr(out.rgb, view["image"])))
        scores["ssim"].append(float(ssim(out.rgb, view["image"])))
        scores["lpips"].append(lpips(out.rgb, view["image"]))
    return {k: statistics.fmean(v) for k, v in scores.items()}


@torch.no_grad()
def render_time_ms(module: GoDeModule, params: dict[str, torch.Tensor], view: dict, repeats: int = 5) -> float:
    """Median wall time (ms) of rendering ``params`` into ``view`` (one warm-up call)."""
    module.render_params(params, view)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        module.render_params(params, view)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def opacity_prune(module: GoDeModule, count: int) -> torch.Tensor:
    """Indices of the ``count`` most opaque stored Gaussians (naive pruning baseline)."""
    stored = (module.level_of >= 0).nonzero().flatten()
    opac = torch.sigmoid(module.gaussians.opacity_logits.detach())[stored]
    return stored[torch.argsort(opac, descending=True, stable=True)[:count]]


def random_prune(module: GoDeModule, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` stored Gaussians drawn uniformly at random (naive pruning baseline)."""
    stored = (module.level_of >= 0).nonzero().flatten()
    return stored[torch.randperm(len(stored), generator=torch.Generator().manual_seed(seed))[:count]]
