"""Networks: the 1-channel ResNet encoders with their SparK-style decoder, the conditional UNet, a conv autoencoder.

Two encoders share one interface (``features(x, keep)``, ``pooled``, ``proj``, ``forward``, ``feature_widths``,
``feature_strides``): a small pre-activation basic-block ResNet (the CPU configs) and the paper's bottleneck
ResNet-50 (``arch="bottleneck"``, widths ``(64, 128, 256, 512)``, blocks ``(3, 4, 6, 3)``) with a 1-channel stem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from diffusers import UNet2DConditionModel
from torch import nn
from torch.nn import functional as F


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: statistics of masked (emptied) regions must not leak across samples.
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """Pre-activation basic residual block; ``stride=2`` halves the resolution."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            _norm(c_in),
            nn.SiLU(),
            nn.Conv2d(c_in, c_out, 3, stride, 1),
            _norm(c_out),
            nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1),
        )
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


def _per_stage(blocks: int | Sequence[int], stages: int) -> list[int]:
    """Blocks per stage from one count for all stages or one count per stage."""
    per = [int(blocks)] * stages if isinstance(blocks, int) else [int(b) for b in blocks]
    if len(per) != stages:
        raise ValueError(f"blocks needs one count per stage: {len(per)} counts for {stages} stages")
    return per


def mask_at(keep: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """The keep mask ``[B, 1, H, W]`` at the spatial size of ``like`` (nearest: exact when patches cover cells)."""
    if keep is None or keep.shape[-2:] == like.shape[-2:]:
        return keep
    return F.interpolate(keep, size=like.shape[-2:], mode="nearest")


class ResNetEncoder(nn.Module):
    """A small 1-channel pre-activation basic-block ResNet with a vector head (the CPU configs' encoder).

    With a patch mask, the input and every stage's output are re-masked at that stage's resolution: SparK's way of
    making a dense CNN behave like a sparse one, so masked patches never leak into visible features.

    Args:
        in_channels: Image channels.
        widths: Channels per stage; every stage after the first halves the resolution.
        blocks: Residual blocks per stage (one count, or one per stage).
        embed_dim: Width of the output vector (the conditioning vector).
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks: int | Sequence[int] = 1,
        embed_dim: int = 128,
    ):
        super().__init__()
        widths = list(widths)
        self.widths = widths
        self.feature_widths = widths
        self.feature_strides = [2**k for k in range(len(widths))]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1)
        stages = []
        for k, (w, n) in enumerate(zip(widths, _per_stage(blocks, len(widths)))):
            c_in = widths[max(k - 1, 0)]
            layers = [ResBlock(c_in, w, stride=1 if k == 0 else 2)]
            layers += [ResBlock(w, w) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(_norm(widths[-1]), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(widths[-1], embed_dim)

    def features(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Feature maps of every stage (``[B, widths[k], H / 2**k, W / 2**k]``); ``keep [B, 1, H, W]`` masks."""
        h = self.stem(x if keep is None else x * keep)
        feats = []
        for stage in self.stages:
            h = stage(h)
            if keep is not None:
                h = h * mask_at(keep, h)
            feats.append(h)
        return feats

    def pooled(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Global feature ``[B, widths[-1]]`` of the deepest stage."""
        return self.head(feats[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Conditioning vector ``[B, embed_dim]`` of images ``[B, C, H, W]``."""
        return self.proj(self.pooled(self.features(x)))


class MaskedGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics, under a keep mask, come from the visible positions only (zeros elsewhere).

    This is the sparse normalisation of SparK, per sample: with ``keep=None`` it is exactly ``nn.GroupNorm``.
    GroupNorm instead of the paper's BatchNorm so that a sample's features never depend on the rest of the batch
    (evaluation feeds one volume at a time); it has the same parameters (a weight and a bias per channel).
    """

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised ``x [B, C, H, W]``; ``keep [B, 1, H, W]`` (any resolution) marks visible positions."""
        if keep is None:
            return super().forward(x)
        b, c, h, w = x.shape
        m = mask_at(keep, x).view(b, 1, 1, h, w)
        xg = x.view(b, self.num_groups, c // self.num_groups, h, w)
        count = (m.sum(dim=(2, 3, 4), keepdim=True) * (c // self.num_groups)).clamp_min(1)
        mean = (xg * m).sum(dim=(2, 3, 4), keepdim=True) / count
        var = ((xg - mean) ** 2 * m).sum(dim=(2, 3, 4), keepdim=True) / count
        y = ((xg - mean) * torch.rsqrt(var + self.eps)).view(b, c, h, w)
        return (y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)) * m.view(b, 1, h, w)


def _gn(channels: int) -> MaskedGroupNorm:
    return MaskedGroupNorm(math.gcd(32, channels), channels)


class Bottleneck(nn.Module):
    """ResNet-50's bottleneck block (1x1 reduce, 3x3 with the stride, 1x1 expand x4), sparse under a keep mask.

    Every normalisation takes the mask and zeroes hidden positions, so each convolution sees hidden inputs as
    zeros: a visible output depends on visible inputs only, as in a sparse convolution.
    """

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = _gn(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = _gn(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = _gn(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.ModuleList([nn.Conv2d(c_in, c_out, 1, stride, bias=False), _gn(c_out)])

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, c_in, H, W]`` -> ``[B, 4 * width, H / stride, W / stride]``."""
        h = F.relu(self.bn1(self.conv1(x), keep))
        h = F.relu(self.bn2(self.conv2(h), keep))
        h = self.bn3(self.conv3(h), keep)
        skip = x if self.downsample is None else self.downsample[1](self.downsample[0](x), keep)
        return F.relu(h + skip)


class BottleneckResNetEncoder(nn.Module):
    """1-channel bottleneck ResNet (ResNet-50 with the defaults) with a vector head; SparK-sparse under a mask.

    Layout as torchvision's ``resnet50``: a 7x7 stride-2 stem and a 3x3 stride-2 max-pool, then four stages
    (stride 1, 2, 2, 2) of bottleneck blocks whose outputs have ``4 * widths[k]`` channels. Only the stem's input
    channels (1, not 3) and the head (no 1000-way classifier; a projection to ``embed_dim``) differ, and
    normalisation is :class:`MaskedGroupNorm`. Under a keep mask the input is masked and every normalisation
    (and the max-pool output) is re-masked, so hidden patches never reach visible features.

    Args:
        in_channels: Image channels.
        widths: Bottleneck widths per stage (ResNet-50: 64, 128, 256, 512; the stem has ``widths[0]`` channels).
        blocks: Bottleneck blocks per stage (ResNet-50: 3, 4, 6, 3).
        embed_dim: Width of the output vector (the conditioning vector).
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = (64, 128, 256, 512),
        blocks: int | Sequence[int] = (3, 4, 6, 3),
        embed_dim: int = 128,
    ):
        super().__init__()
        widths = list(widths)
        self.widths = widths
        self.feature_widths = [w * Bottleneck.expansion for w in widths]
        self.feature_strides = [4 * 2**k for k in range(len(widths))]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        self.bn1 = _gn(widths[0])
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, c_in = [], widths[0]
        for k, (w, n) in enumerate(zip(widths, _per_stage(blocks, len(widths)))):
            layers = [Bottleneck(c_in, w, stride=1 if k == 0 else 2)]
            layers += [Bottleneck(w * Bottleneck.expansion, w) for _ in range(n - 1)]
            stages.append(nn.ModuleList(layers))
            c_in = w * Bottleneck.expansion
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(self.feature_widths[-1], embed_dim)

    def features(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Stage outputs ``[B, 4 * widths[k], H / (4 * 2**k), W / (4 * 2**k)]``; ``keep [B, 1, H, W]`` masks."""
        h = F.relu(self.bn1(self.conv1(x if keep is None else x * keep), keep))
        h = self.maxpool(h)
        if keep is not None:
            # ReLU outputs are >= 0, so hidden zeros never win a max next to a visible value; re-mask the rest.
            h = h * mask_at(keep, h)
        feats = []
        for stage in self.stages:
            for block in stage:
                h = block(h, keep)
            feats.append(h)
        return feats

    def pooled(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Global feature ``[B, 4 * widths[-1]]`` of the deepest stage."""
        return self.head(feats[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Conditioning vector ``[B, embed_dim]`` of images ``[B, C, H, W]``."""
        return self.proj(self.pooled(self.features(x)))


EncoderArch = Literal["basic", "bottleneck"]


def build_encoder(
    arch: EncoderArch, widths: Sequence[int], blocks: int | Sequence[int], embed_dim: int, in_channels: int = 1
) -> ResNetEncoder | BottleneckResNetEncoder:
    """The encoder named by ``arch``: ``"basic"`` (small pre-activation ResNet) or ``"bottleneck"`` (ResNet-50)."""
    if arch == "basic":
        return ResNetEncoder(in_channels, widths, blocks, embed_dim)
    if arch == "bottleneck":
        return BottleneckResNetEncoder(in_channels, widths, blocks, embed_dim)
    raise ValueError(f"unknown encoder arch {arch!r}: use 'basic' or 'bottleneck'")


class SparKDecoder(nn.Module):
    """Light UNet-style decoder: fills masked positions with a learned token per stage and predicts pixels.

    Args:
        widths: Channels of the encoder's feature maps, shallowest first (each stage halves the resolution).
        out_channels: Image channels.
        first_stride: Downsampling of the shallowest feature map (basic encoder 1, ResNet-50 4); the decoder
            upsamples by this factor at the end.
        decoder_widths: Decoder channels per level (``None``: the encoder's widths). A 1x1 projection maps each
            encoder feature to its level's width when they differ (keeps a ResNet-50 decoder light).
    """

    def __init__(
        self,
        widths: Sequence[int],
        out_channels: int = 1,
        first_stride: int = 1,
        decoder_widths: Sequence[int] | None = None,
    ):
        super().__init__()
        widths = list(widths)
        dec = list(decoder_widths) if decoder_widths is not None else widths
        if len(dec) != len(widths):
            raise ValueError(f"decoder_widths needs one width per encoder stage: {len(dec)} vs {len(widths)}")
        if first_stride < 1 or first_stride & (first_stride - 1):
            raise ValueError(f"first_stride must be a power of two, got {first_stride}")
        self.tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, w, 1, 1)) for w in widths])
        # Identity where the widths agree, so the basic encoder's decoder keeps its parameters (and checkpoints).
        self.proj = nn.ModuleList(nn.Identity() if w == d else nn.Conv2d(w, d, 1) for w, d in zip(widths, dec))
        self.ups = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dec[k + 1], dec[k], 3, 1, 1))
            for k in range(len(dec) - 1)
        )
        self.fuse = nn.ModuleList(ResBlock(w, w) for w in dec[:-1])
        tail = []
        for _ in range(int(math.log2(first_stride))):
            tail += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dec[0], dec[0], 3, 1, 1)]
            tail += [_norm(dec[0]), nn.SiLU()]
        self.tail = nn.Sequential(*tail)
        self.out = nn.Sequential(_norm(dec[0]), nn.SiLU(), nn.Conv2d(dec[0], out_channels, 3, 1, 1))

    def forward(self, feats: list[torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, out_channels, H, W]`` from sparse features and the keep mask ``[B, 1, H, W]``."""
        dense = []
        for f, token, proj in zip(feats, self.tokens, self.proj):
            m = mask_at(keep, f)
            dense.append(proj(f * m + token * (1 - m)))
        h = dense[-1]
        for k in range(len(self.ups) - 1, -1, -1):
            h = self.fuse[k](self.ups[k](h) + dense[k])
        return self.out(self.tail(h))


class ConditionalUNet(nn.Module):
    """diffusers' UNet predicting ``x0``; a condition vector, through an MLP, is concatenated to the time embedding.

    ``UNet2DConditionModel(class_embed_type="projection", class_embeddings_concat=True)`` builds exactly the paper's
    conditioning (Linear, SiLU, Linear on the vector, concatenated, no cross-attention). Its blocks here have no
    cross-attention, so the ``encoder_hidden_states`` it requires is a one-token dummy that no layer reads.

    Args:
        image_size: Side of the square input.
        channels: Output channels per resolution level.
        layers_per_block: Residual blocks per level.
        attention: Whether each level (from the highest resolution down) has self-attention.
        cond_dim: Width of the condition vector; ``None`` for the unconditional model.
        in_channels: Image channels.
    """

    def __init__(
        self,
        image_size: int = 48,
        channels: Sequence[int] = (32, 64, 64),
        layers_per_block: int = 1,
        attention: Sequence[bool] = (False, False, True),
        cond_dim: int | None = 128,
        in_channels: int = 1,
    ):
        super().__init__()
        if len(attention) != len(channels):
            raise ValueError(f"attention needs one flag per level: {len(attention)} vs {len(channels)} levels")
        self.cond_dim = cond_dim
        self.unet = UNet2DConditionModel(
            sample_size=image_size,
            in_channels=in_channels,
            out_channels=in_channels,
            block_out_channels=tuple(channels),
            layers_per_block=layers_per_block,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
            mid_block_type="UNetMidBlock2D",
            class_embed_type=None if cond_dim is None else "projection",
            projection_class_embeddings_input_dim=cond_dim,
            class_embeddings_concat=cond_dim is not None,
            cross_attention_dim=8,
            attention_head_dim=8,
            norm_num_groups=min(8, channels[0]),
        )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted clean images ``[B, C, H, W]`` from noisy ``x_t``, steps ``t [B]`` and condition ``[B, D]``."""
        if (cond is None) != (self.cond_dim is None):
            raise ValueError("pass a condition exactly when the UNet was built with cond_dim")
        dummy = x_t.new_zeros(x_t.shape[0], 1, 8)
        return self.unet(x_t, t, encoder_hidden_states=dummy, class_labels=cond).sample


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder baseline with a spatial bottleneck (``H / 2**(len(widths)) `` per side)."""

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64), latent: int = 16):
        super().__init__()
        enc, c = [], in_channels
        for w in widths:
            enc += [nn.Conv2d(c, w, 4, 2, 1), _norm(w), nn.SiLU()]
            c = w
        enc.append(nn.Conv2d(c, latent, 1))
        dec, c = [nn.Conv2d(latent, widths[-1], 1)], widths[-1]
        for w in reversed(widths[:-1]):
            dec += [_norm(c), nn.SiLU(), nn.ConvTranspose2d(c, w, 4, 2, 1)]
            c = w
        dec += [_norm(c), nn.SiLU(), nn.ConvTranspose2d(c, in_channels, 4, 2, 1)]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[B, C, H, W]`` of ``x``."""
        return self.decoder(self.encoder(x))
