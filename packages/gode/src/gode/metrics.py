"""Image metrics of the paper's tables (PSNR, SSIM, LPIPS) and the photometric training loss, on ``[H, W, 3]``."""

from __future__ import annotations

from pathlib import Path

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(2, 0, 1)[None]


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of ``pred`` against ``target``, both ``[H, W, 3]`` in [0, 1]."""
    return peak_signal_noise_ratio(pred.clamp(0, 1), target, data_range=1.0)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM (11x11 Gaussian window, sigma 1.5) of ``[H, W, 3]`` images in [0, 1]."""
    return structural_similarity_index_measure(_nchw(pred.clamp(0, 1)), _nchw(target), data_range=1.0)


def photometric_loss(pred: torch.Tensor, target: torch.Tensor, ssim_lambda: float = 0.2) -> torch.Tensor:
    """3DGS loss ``(1 - λ) L1 + λ (1 - SSIM)`` on ``[H, W, 3]`` images (GoDe's importance uses λ = 0.2)."""
    l1 = (pred - target).abs().mean()
    return (1 - ssim_lambda) * l1 + ssim_lambda * (
        1 - structural_similarity_index_measure(_nchw(pred), _nchw(target), data_range=1.0)
    )


def lpips_available() -> bool:
    """Whether LPIPS (VGG) can run offline: its torchvision VGG16 weights are already in the torch hub cache."""
    return (Path(torch.hub.get_dir()) / "checkpoints" / "vgg16-397923af.pth").is_file()


def lpips(pred: torch.Tensor, target: torch.Tensor) -> float:
    """LPIPS with a VGG backbone (as 3DGS reports it) of ``[H, W, 3]`` images in [0, 1]; nan without its weights.

    Only weights already on this machine are used: a download attempt on an offline machine can hang.
    """
    if not lpips_available():
        return float("nan")
    from torchmetrics.functional.image.lpips import learned_perceptual_image_patch_similarity

    return float(
        learned_perceptual_image_patch_similarity(
            _nchw(pred.clamp(0, 1)) * 2 - 1, _nchw(target) * 2 - 1, net_type="vgg"
        )
    )
