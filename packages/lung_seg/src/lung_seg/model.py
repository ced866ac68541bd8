"""Segmentation networks: the paper's 2D U-Net, and MONAI's UNet/BasicUNet as alternatives (pure torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class DoubleConv(nn.Sequential):
    """Two (Conv3x3 + BatchNorm + ReLU) blocks; spatial size is kept."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Decoder step: upsample x2, 2x2 conv halving the channels, pad to the skip's size, concatenate, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, out_channels, 2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x [B, C_in, h, w]``, ``skip [B, C_out, H, W]`` with ``H in (2h, 2h+1)`` -> ``[B, C_out, H, W]``."""
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        # A 2x2 convolution shrinks by one pixel; pad right/bottom first so that it keeps the upsampled size.
        x = self.reduce(F.pad(x, (0, 1, 0, 1)))
        dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))  # odd input sizes lose a pixel when pooled
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """The paper's 2D U-Net (Ronneberger et al.): channels ``base * 2**k`` for ``k = 0..depth``.

    The paper uses ``base_channels=64, depth=4`` (64-128-256-512-1024) on ``1 x 512 x 512`` slices. The output is
    one logit per pixel (the paper's sigmoid is applied by the loss and at inference), for any input size.

    Args:
        in_channels: Input channels (1 for CT).
        out_channels: Output logits per pixel.
        base_channels: Channels of the first level.
        depth: Number of 2x2 max-pooling steps.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 64, depth: int = 4):
        super().__init__()
        widths = [base_channels * 2**k for k in range(depth + 1)]
        self.in_channels = in_channels
        self.down = nn.ModuleList([DoubleConv(in_channels, widths[0])])
        self.down.extend(DoubleConv(widths[k], widths[k + 1]) for k in range(depth))
        self.up = nn.ModuleList(Up(widths[k + 1], widths[k]) for k in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, out_channels, H, W]`` of images ``[B, in_channels, H, W]``."""
        check_input(x, self.in_channels)
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            x = block(x, skips.pop())
        return self.head(x)


def check_input(x: torch.Tensor, channels: int) -> None:
    """Raise a clear error unless ``x`` is ``[B, channels, H, W]``."""
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"expected CT slices of shape [B, {channels}, H, W], got {tuple(x.shape)}")


class MonaiUNet(nn.Module):
    """MONAI's residual ``UNet`` in 2D (input sizes must be divisible by ``2**len(strides)``).

    Args:
        channels: Channels per level.
        num_res_units: Residual units per block.
        in_channels: Input channels.
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64, 128, 256), num_res_units: int = 2, in_channels: int = 1):
        super().__init__()
        from monai.networks.nets import UNet as _UNet

        self.in_channels = in_channels
        self.net = _UNet(
            2, in_channels, 1, tuple(channels), (2,) * (len(channels) - 1), num_res_units=num_res_units, norm="batch"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 1, H, W]`` of ``[B, C, H, W]``."""
        check_input(x, self.in_channels)
        return self.net(x)


class MonaiBasicUNet(nn.Module):
    """MONAI's ``BasicUNet`` in 2D (any input size).

    Args:
        features: Six feature counts (five levels and the last decoder stage), as in MONAI.
        in_channels: Input channels.
    """

    def __init__(self, features: Sequence[int] = (32, 32, 64, 128, 256, 32), in_channels: int = 1):
        super().__init__()
        from monai.networks.nets import BasicUNet as _BasicUNet

        self.in_channels = in_channels
        self.net = _BasicUNet(2, in_channels, 1, tuple(features), norm="batch")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 1, H, W]`` of ``[B, C, H, W]``."""
        check_input(x, self.in_channels)
        return self.net(x)


def init_output_prior(net: nn.Module, prior: float) -> None:
    """Set the bias of the network's last single-channel convolution to ``logit(prior)``.

    A Dice loss on sigmoid outputs starts at p = 0.5 on every background pixel; starting from a small foreground
    prior (as RetinaNet does for its classifier) skips the long phase in which the bias alone walks down to it.
    """
    last = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.out_channels == 1]
    if not last or last[-1].bias is None:
        raise ValueError("no single-channel output convolution with a bias found")
    with torch.no_grad():
        last[-1].bias.fill_(math.log(prior / (1 - prior)))
