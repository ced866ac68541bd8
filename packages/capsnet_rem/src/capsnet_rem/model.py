"""Sabour's CapsNet with a configurable stem, as used by REM (pure torch, no Lightning, no I/O)."""

from __future__ import annotations

import torch
from torch import nn

from capsnet_rem.capsules import CapsOutput, ClassCapsules, Decoder, PrimaryCapsules


class CapsNet(nn.Module):
    """Conv stem -> primary capsules -> class capsules (dynamic routing) -> optional reconstruction decoder.

    The defaults are Sabour's MNIST network: 256 9x9 filters, 32 x 8D primary capsules (9x9, stride 2, 1152 in
    all), 10 x 16D class capsules, 3 routing iterations.

    Args:
        in_shape: Image shape ``(C, H, W)``.
        num_classes: Class capsules ``J``.
        conv_channels: Filters of the stem convolution.
        conv_kernel: Kernel of the stem convolution (stride 1, ReLU).
        primary_types: Primary capsule types.
        primary_dims: Primary capsule dimensions.
        primary_kernel: Primary capsule convolution kernel.
        primary_stride: Primary capsule convolution stride.
        class_dims: Class capsule dimensions.
        routing_iterations: Routing iterations.
        weight_std: Std of the transformation matrices' normal initialisation.
        routing_bias_init: Initial routing bias.
        decoder: Add the reconstruction decoder.
        quantize_bins: CapsNet+Q: bins of the last iteration's couplings (None: exact).
        primary_conv: Algorithm of the primary-capsule convolution, ``"direct"`` (``nn.Conv2d``: oneDNN / cuDNN)
            or ``"fft"`` (polyphase DFT, :mod:`capsnet_rem.fftconv`); same parameters, state_dict and outputs
            (to rounding). ``"fft"`` makes Sabour's 256 -> 256 channel layer 1.7-1.9x faster on this 2-core CPU
            (forward + backward, batch 128); the default stays ``"direct"``: fft gains nothing on the CPU configs'
            16-channel network, and it was not compared with cuDNN on a GPU.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        conv_channels: int = 256,
        conv_kernel: int = 9,
        primary_types: int = 32,
        primary_dims: int = 8,
        primary_kernel: int = 9,
        primary_stride: int = 2,
        class_dims: int = 16,
        routing_iterations: int = 3,
        weight_std: float = 0.1,
        routing_bias_init: float = 0.1,
        decoder: bool = False,
        quantize_bins: int | None = None,
        primary_conv: str = "direct",
    ):
        super().__init__()
        self.in_shape = tuple(in_shape)
        c, h, w = self.in_shape
        self.conv = nn.Conv2d(c, conv_channels, conv_kernel)
        self.primary = PrimaryCapsules(
            conv_channels, primary_types, primary_dims, primary_kernel, primary_stride, primary_conv
        )
        self.grid = tuple((s - conv_kernel + 1 - primary_kernel) // primary_stride + 1 for s in (h, w))
        if min(self.grid) < 1:
            raise ValueError(f"input {self.in_shape} is too small for kernels {conv_kernel} and {primary_kernel}")
        in_caps = primary_types * self.grid[0] * self.grid[1]
        self.caps = ClassCapsules(
            in_caps,
            primary_dims,
            num_classes,
            class_dims,
            routing_iterations,
            weight_std,
            routing_bias_init,
            quantize_bins,
        )
        self.decoder = Decoder(num_classes * class_dims, self.in_shape) if decoder else None

    @property
    def num_primary(self) -> int:
        """Number of primary capsules ``I``."""
        return self.caps.in_caps

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> CapsOutput:
        """Run images ``[B, C, H, W]``; the decoder (if any) sees capsule ``target`` ``[B]``, else the prediction."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"expected images [B, {', '.join(map(str, self.in_shape))}], got {tuple(x.shape)}")
        u = self.primary(torch.relu(self.conv(x)))
        poses, coupling = self.caps(u)
        lengths = poses.norm(dim=-1)
        recon = None
        if self.decoder is not None:
            recon = self.decoder(poses, lengths.argmax(1) if target is None else target)
        return CapsOutput(lengths, poses, coupling, recon)

    def alive_primary_capsules(self) -> torch.Tensor:
        """Mask ``[I]`` of primary capsules that can still vote (see :func:`alive_primary_capsules`)."""
        return alive_primary_capsules(self)

    def pruning_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters REM regularises and prunes: the stem, primary and class capsules (not the decoder)."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("decoder.")]


@torch.no_grad()
def alive_primary_capsules(net: CapsNet) -> torch.Tensor:
    """Mask ``[I]`` of primary capsules that can still vote (type-major order).

    A capsule is dead when all its transformation matrices are zero, or when its type's convolution weights and
    biases are all zero (then it is squash(0) = 0 everywhere).
    """
    p = net.primary
    conv_w = p.conv.weight.view(p.types, -1).abs().sum(1)
    conv_b = p.conv.bias.view(p.types, -1).abs().sum(1) if p.conv.bias is not None else torch.zeros_like(conv_w)
    type_alive = (conv_w + conv_b) > 0
    per_type = net.grid[0] * net.grid[1]
    routes = net.caps.weight.flatten(1).abs().sum(1) > 0
    return routes & type_alive.repeat_interleave(per_type)


@torch.no_grad()
def compact(net: CapsNet) -> CapsNet:
    """A physically smaller copy of ``net`` without the primary-capsule types that can no longer vote.

    A type is removed when every capsule of it is dead (see :func:`alive_primary_capsules`). A dead capsule's votes are
    zero, so it adds nothing to any ``s_j``, and the softmax over output capsules is per input capsule: the remaining
    capsules' couplings and every output are unchanged.
    """
    per_type = net.grid[0] * net.grid[1]
    alive = alive_primary_capsules(net).view(net.primary.types, per_type)
    keep = alive.any(1).nonzero().flatten()
    if len(keep) == 0:
        keep = torch.zeros(1, dtype=torch.long)  # keep one type so the network stays well formed
    small = CapsNet(
        in_shape=net.in_shape,
        num_classes=net.caps.out_caps,
        conv_channels=net.conv.out_channels,
        conv_kernel=net.conv.kernel_size[0],
        primary_types=len(keep),
        primary_dims=net.primary.dims,
        primary_kernel=net.primary.conv.kernel_size[0],
        primary_stride=net.primary.conv.stride[0],
        class_dims=net.caps.out_dims,
        routing_iterations=net.caps.iterations,
        decoder=net.decoder is not None,
        quantize_bins=net.caps.quantize_bins,
        primary_conv=net.primary.algorithm,
    ).to(net.caps.weight.device, net.caps.weight.dtype)
    dims = net.primary.dims
    rows = (keep[:, None] * dims + torch.arange(dims)).flatten()
    caps_rows = (keep[:, None] * per_type + torch.arange(per_type)).flatten()
    small.conv.load_state_dict(net.conv.state_dict())
    small.primary.conv.weight.copy_(net.primary.conv.weight[rows])
    small.primary.conv.bias.copy_(net.primary.conv.bias[rows])
    small.caps.weight.copy_(net.caps.weight[caps_rows])
    small.caps.bias.copy_(net.caps.bias)
    if net.decoder is not None:
        small.decoder.load_state_dict(net.decoder.state_dict())
    return small
