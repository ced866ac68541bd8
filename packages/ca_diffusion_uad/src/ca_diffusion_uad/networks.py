"""Networks: the 1-channel ResNet encoder with its SparK-style decoder, the conditional UNet, a conv autoencoder."""

from __future__ import annotations

from collections.abc import Sequence

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


class ResNetEncoder(nn.Module):
    """A 1-channel ResNet with a vector head (the paper uses ResNet-50; the width is configurable).

    With a patch mask, the input and every stage's output are re-masked at that stage's resolution: SparK's way of
    making a dense CNN behave like a sparse one, so masked patches never leak into visible features.

    Args:
        in_channels: Image channels.
        widths: Channels per stage; every stage after the stem halves the resolution.
        blocks: Residual blocks per stage.
        embed_dim: Width of the output vector (the conditioning vector).
    """

    def __init__(
        self, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64, 128), blocks: int = 1, embed_dim: int = 128
    ):
        super().__init__()
        widths = list(widths)
        self.widths = widths
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1)
        stages = []
        for k, w in enumerate(widths):
            c_in = widths[max(k - 1, 0)]
            layers = [ResBlock(c_in, w, stride=1 if k == 0 else 2)]
            layers += [ResBlock(w, w) for _ in range(blocks - 1)]
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
                h = h * F.interpolate(keep, size=h.shape[-2:], mode="nearest")
            feats.append(h)
        return feats

    def pooled(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Global feature ``[B, widths[-1]]`` of the deepest stage."""
        return self.head(feats[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Conditioning vector ``[B, embed_dim]`` of images ``[B, C, H, W]``."""
        return self.proj(self.pooled(self.features(x)))


class SparKDecoder(nn.Module):
    """Light UNet-style decoder that fills masked positions with a learned token per stage and predicts pixels."""

    def __init__(self, widths: Sequence[int], out_channels: int = 1):
        super().__init__()
        widths = list(widths)
        self.tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, w, 1, 1)) for w in widths])
        self.ups = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[k + 1], widths[k], 3, 1, 1))
            for k in range(len(widths) - 1)
        )
        self.fuse = nn.ModuleList(ResBlock(w, w) for w in widths[:-1])
        self.out = nn.Sequential(_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], out_channels, 3, 1, 1))

    def forward(self, feats: list[torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, out_channels, H, W]`` from sparse features and the keep mask ``[B, 1, H, W]``."""
        dense = []
        for f, token in zip(feats, self.tokens):
            m = F.interpolate(keep, size=f.shape[-2:], mode="nearest")
            dense.append(f * m + token * (1 - m))
        h = dense[-1]
        for k in range(len(self.ups) - 1, -1, -1):
            h = self.fuse[k](self.ups[k](h) + dense[k])
        return self.out(h)


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
