"""Capsule layers, dynamic routing and the capsule losses (pure torch, no Lightning, no I/O).

Shapes use ``B`` batch, ``I`` input (primary) capsules, ``J`` output (class) capsules, ``D`` capsule dimensions.
Routing follows Sabour et al. (2017) as the REM code runs it: the softmax is over the output-capsule axis ``J``, a
learnable bias is added to ``s_j``, and the votes are detached in every iteration but the last.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from capsnet_rem.fftconv import CONV_ALGORITHMS, fft_conv2d


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
    """Squash vectors to length in [0, 1): ``|s|^2 / (1 + |s|^2) * s / sqrt(|s|^2 + eps)``."""
    sq = (s * s).sum(dim, keepdim=True)
    return s * (sq / ((1.0 + sq) * torch.sqrt(sq + eps)))


def bin_centres(bins: int, device: torch.device | None = None) -> torch.Tensor:
    """``bins`` centres evenly spaced on [0, 1] (11 bins: 0, 0.1, ..., 1.0)."""
    return torch.linspace(0.0, 1.0, bins, device=device)


def bin_index(c: torch.Tensor, bins: int) -> torch.Tensor:
    """Index of the nearest of ``bins`` centres on [0, 1] (edges half-way between centres); same shape as ``c``."""
    half = 0.5 / (bins - 1)
    inner_edges = torch.linspace(half, 1.0 - half, bins - 1, device=c.device, dtype=c.dtype)
    return torch.bucketize(c, inner_edges)


def dynamic_routing(
    u_hat: torch.Tensor, bias: torch.Tensor, iterations: int = 3, quantize_bins: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing by agreement.

    Args:
        u_hat: Votes ``[B, J, I, D]``: ``u_hat[b, j, i]`` is primary capsule ``i``'s prediction for capsule ``j``.
            Grouping the votes by output capsule makes both routing contractions one batched matrix product.
        bias: Routing bias ``[J, D]`` added to every ``s_j``.
        iterations: Routing iterations (>= 1).
        quantize_bins: If set, the last iteration's coupling coefficients are replaced by the nearest of this many
            bin centres (CapsNet+Q); gradients pass straight through.

    Returns:
        Output capsules ``v`` ``[B, J, D]`` and the last iteration's coupling coefficients ``c`` ``[B, I, J]``.
    """
    if iterations < 1:
        raise ValueError(f"routing needs at least one iteration, got {iterations}")
    # Earlier iterations only choose the couplings: detaching their votes keeps gradients (and their memory) to
    # the final weighted sum, as in the REM code.
    frozen = u_hat.detach()
    logits = u_hat.new_zeros(u_hat.shape[:3])  # [B, J, I]
    for it in range(iterations):
        c = logits.softmax(dim=1)  # over OUTPUT capsules: each input capsule distributes itself
        last = it == iterations - 1
        if last and quantize_bins is not None:
            centres = bin_centres(quantize_bins, c.device).to(c.dtype)
            c = c + (centres[bin_index(c.detach(), quantize_bins)] - c).detach()
        votes = u_hat if last else frozen
        v = squash(torch.matmul(c.unsqueeze(2), votes).squeeze(2) + bias)  # s_j = sum_i c_ij u_hat_j|i + b_j
        if not last:
            logits = logits + torch.matmul(frozen, v.unsqueeze(-1)).squeeze(-1)  # b_ij += <v_j, u_hat_j|i>
    return v, c.transpose(1, 2)


class PrimaryCapsules(nn.Module):
    """One convolution read as ``types`` capsule types of ``dims`` dimensions at every position, then squashed.

    Capsules come out type-major, ``(type, h, w)``, which is the order parse-tree keys and compaction rely on.

    Args:
        in_channels: Input feature channels.
        types: Capsule types (32 in Sabour's MNIST CapsNet).
        dims: Dimensions per primary capsule (8).
        kernel_size: Convolution kernel (9; the whole feature map in the ICIP heads).
        stride: Convolution stride (2).
        algorithm: How the convolution is computed, same parameters and result either way: ``"direct"``
            (``nn.Conv2d``: oneDNN / cuDNN) or ``"fft"`` (polyphase DFT, :func:`capsnet_rem.fftconv.fft_conv2d`;
            faster on CPU for many channels on small maps, e.g. 1.7-1.9x for Sabour's 256 -> 256 9x9 stride-2 layer).
    """

    def __init__(
        self, in_channels: int, types: int, dims: int, kernel_size: int, stride: int, algorithm: str = "direct"
    ):
        super().__init__()
        if algorithm not in CONV_ALGORITHMS:
            raise ValueError(f"unknown convolution algorithm {algorithm!r}; choose from {CONV_ALGORITHMS}")
        self.types, self.dims, self.algorithm = types, dims, algorithm
        self.conv = nn.Conv2d(in_channels, types * dims, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Capsules ``[B, types * H * W, dims]`` of features ``[B, C, H_in, W_in]``."""
        if self.algorithm == "fft":
            out = fft_conv2d(x, self.conv.weight, self.conv.bias, self.conv.stride)
        else:
            out = self.conv(x)
        b, _, h, w = out.shape
        u = out.view(b, self.types, self.dims, h, w).permute(0, 1, 3, 4, 2).reshape(b, self.types * h * w, self.dims)
        return squash(u)


class ClassCapsules(nn.Module):
    """Fully connected capsule layer with dynamic routing; transformation matrices are not shared across positions.

    ``weight[i, :, j, :]`` maps input capsule ``i`` (row vector, ``in_dims``) to its vote for output capsule ``j``.
    The votes are one contraction that never broadcasts the weights over the batch (the memory blow-up of the
    usual ``W[None] @ u[..., None]`` formulation).

    Args:
        in_caps: Number of input capsules ``I``.
        in_dims: Input capsule dimensions.
        out_caps: Number of output capsules ``J``.
        out_dims: Output capsule dimensions ``D``.
        iterations: Routing iterations.
        weight_std: Std of the normal initialisation of the transformation matrices.
        bias_init: Initial value of the routing bias.
        quantize_bins: Bins for CapsNet+Q (None: exact coupling coefficients).
    """

    def __init__(
        self,
        in_caps: int,
        in_dims: int,
        out_caps: int,
        out_dims: int,
        iterations: int = 3,
        weight_std: float = 0.1,
        bias_init: float = 0.1,
        quantize_bins: int | None = None,
    ):
        super().__init__()
        self.in_caps, self.out_caps, self.out_dims = in_caps, out_caps, out_dims
        self.iterations, self.quantize_bins = iterations, quantize_bins
        self.weight = nn.Parameter(torch.randn(in_caps, in_dims, out_caps, out_dims) * weight_std)
        self.bias = nn.Parameter(torch.full((out_caps, out_dims), bias_init))

    def votes(self, u: torch.Tensor) -> torch.Tensor:
        """Votes ``u_hat`` ``[B, J, I, D]`` of input capsules ``u`` ``[B, I, in_dims]``."""
        return torch.einsum("bik,ikjd->bjid", u, self.weight)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output capsules ``[B, J, D]`` and last-iteration couplings ``[B, I, J]`` of capsules ``[B, I, in_dims]``."""
        return dynamic_routing(self.votes(u), self.bias, self.iterations, self.quantize_bins)


class Decoder(nn.Module):
    """Reconstruction decoder FC ``J*D -> 512 -> 1024 -> C*H*W`` with a sigmoid, fed the masked class capsules.

    Args:
        in_features: ``J * D``.
        out_shape: Image shape ``(C, H, W)``.
        hidden: Hidden widths.
    """

    def __init__(self, in_features: int, out_shape: tuple[int, int, int], hidden: tuple[int, ...] = (512, 1024)):
        super().__init__()
        self.out_shape = tuple(out_shape)
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers += [nn.Linear(width, int(torch.tensor(out_shape).prod())), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, poses: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` from class capsules ``[B, J, D]``, keeping only capsule ``select`` ``[B]``."""
        mask = F.one_hot(select, poses.shape[1]).to(poses.dtype)
        return self.net((poses * mask.unsqueeze(-1)).flatten(1)).view(-1, *self.out_shape)


class CapsOutput(NamedTuple):
    """What a capsule network returns."""

    lengths: torch.Tensor  #: class-capsule lengths ``[B, J]`` (the class scores)
    poses: torch.Tensor  #: class capsules ``[B, J, D]``
    coupling: torch.Tensor  #: last-iteration coupling coefficients ``[B, I, J]``
    reconstruction: torch.Tensor | None  #: decoder output ``[B, C, H, W]`` or None without a decoder


def margin_loss(
    lengths: torch.Tensor, target: torch.Tensor, m_pos: float = 0.9, m_neg: float = 0.1, lam: float = 0.5
) -> torch.Tensor:
    """Margin loss of class-capsule lengths ``[B, J]`` and labels ``[B]``: summed over classes, mean over batch."""
    t = F.one_hot(target, lengths.shape[1]).to(lengths.dtype)
    loss = t * F.relu(m_pos - lengths) ** 2 + lam * (1 - t) * F.relu(lengths - m_neg) ** 2
    return loss.sum(1).mean()


def reconstruction_loss(reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors per image, mean over the batch (weighted by 0.0005 in the total loss)."""
    return (reconstruction - images).pow(2).flatten(1).sum(1).mean()
