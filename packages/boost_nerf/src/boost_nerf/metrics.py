"""Image metrics (torchmetrics), FLOPs per rendered frame, parameter counts."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR (data range 1) of images ``[..., 3]``."""
    return peak_signal_noise_ratio(pred, target, data_range=1.0)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM (Gaussian window 11, sigma 1.5, data range 1) of one image ``[H, W, 3]``."""
    return structural_similarity_index_measure(
        pred.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None], data_range=1.0
    )


def lpips_or_none(pred: torch.Tensor, target: torch.Tensor) -> float | None:
    """LPIPS (VGG) of one image ``[H, W, 3]``, or None when its weights are not on this machine (offline)."""
    from pathlib import Path

    # Only use weights already in the torch hub cache: a download attempt on an offline machine can hang.
    if not (Path(torch.hub.get_dir()) / "checkpoints" / "vgg16-397923af.pth").is_file():
        return None
    try:
        from torchmetrics.functional.image.lpips import learned_perceptual_image_patch_similarity

        return float(
            learned_perceptual_image_patch_similarity(
                pred.permute(2, 0, 1)[None] * 2 - 1, target.permute(2, 0, 1)[None] * 2 - 1, net_type="vgg"
            )
        )
    except Exception:  # missing weights surface as many different errors (network, file, import)
        return None


def count_flops(fn, *args, **kwargs) -> tuple[int, object]:
    """FLOPs of ``fn(*args, **kwargs)`` by torch's FLOP counter (matmuls/convs; grid interpolation not counted)."""
    with FlopCounterMode(display=False) as counter:
        out = fn(*args, **kwargs)
    return counter.get_total_flops(), out


def nonzero_parameters(module: nn.Module) -> int:
    """``||w||_0``: parameters that are not exactly zero."""
    return int(sum((p != 0).sum() for p in module.parameters()))
