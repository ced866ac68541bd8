"""Backbones with the three views the study needs: logits, patch features (for LOST) and a Grad-CAM layer.

Every backbone implements

- ``forward(x [B, C, H, W]) -> logits [B, K]``
- ``patch_features(x) -> (features [B, N, D], grid (h, w))``: CNN last feature map, or ViT last-layer keys
- ``gradcam_layer() -> (module, reshape_transform | None)``: where Grad-CAM reads activations and gradients
- ``cls_attention(x) -> [B, h, w]``: ViTs only, last-layer CLS-to-patch attention averaged over heads

The small models train on CPU in minutes; the torchvision wrappers are the paper's architectures.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.nn import functional as F


# --------------------------------------------------------------------------------------------------- small CNN
class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs, identity or 1x1 projection shortcut); separate ReLUs for guided backprop."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet-style CNN for small images: 3x3 stem, one basic block per stage, global pooling.

    Args:
        num_classes: Number of logits.
        widths: Channels per stage; every stage after the first halves the resolution.
        in_channels: Input channels.
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64), in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]))
        self.stem_relu = nn.ReLU()
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.stages = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map ``[B, C, h, w]``."""
        return self.stages(self.stem_relu(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.feature_map(x).mean(dim=(2, 3)))

    def patch_features(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        fmap = self.feature_map(x)
        return fmap.flatten(2).transpose(1, 2), (fmap.shape[2], fmap.shape[3])

    def gradcam_layer(self):
        return self.stages[-1], None


# --------------------------------------------------------------------------------------------------- small ViT
class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection that also returns keys and attention weights."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Output ``[B, T, D]``, keys ``[B, T, D]`` (heads concatenated), attention ``[B, heads, T, T]``."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out), k.transpose(1, 2).reshape(b, t, d), attn


class EncoderBlock(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.keys: torch.Tensor | None = None
        self.attn_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, self.keys, self.attn_weights = self.attn(self.norm1(x))
        x = x + out
        return x + self.mlp(self.norm2(x))


class SmallViT(nn.Module):
    """A ViT for small images: patch embedding, CLS token, learned positions, pre-norm blocks.

    Args:
        num_classes: Number of logits.
        image_size: Input side length.
        patch_size: Patch side length (``image_size`` must be a multiple).
        dim: Token width.
        depth: Number of blocks.
        heads: Attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
        in_channels: Input channels.
        stem: ``"patch"``: one strided conv (the standard patch embedding); ``"conv"``: stride-2 3x3 convs down to
            the same token grid (Xiao et al., 2021, "Early convolutions help transformers see better"), which trains
            far faster from scratch on small data. ``patch_size`` must then be a power of two.
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 2,
        in_channels: int = 3,
        stem: str = "patch",
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.grid = image_size // patch_size
        self.image_size = image_size
        if stem == "patch":
            self.patch = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        elif stem == "conv":
            steps = patch_size.bit_length() - 1
            if 2**steps != patch_size or steps == 0:
                raise ValueError(f"a conv stem needs a power-of-two patch_size > 1, got {patch_size}")
            layers, cin = [], in_channels
            for i in range(steps):
                cout = dim if i == steps - 1 else dim // 2
                layers.append(nn.Conv2d(cin, cout, 3, 2, 1))
                if i < steps - 1:
                    layers += [nn.BatchNorm2d(cout), nn.ReLU()]
                cin = cout
            self.patch = nn.Sequential(*layers)
        else:
            raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}")
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, self.grid**2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Final tokens ``[B, 1 + h*w, D]`` (CLS first)."""
        if x.shape[-1] != self.image_size or x.shape[-2] != x.shape[-1]:
            raise ValueError(f"expected square images of side {self.image_size}, got {tuple(x.shape)}")
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], dim=1) + self.pos
        return self.norm(self.blocks(t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(x)[:, 0])

    def patch_features(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        self.tokens(x)
        return self.blocks[-1].keys[:, 1:], (self.grid, self.grid)

    def cls_attention(self, x: torch.Tensor) -> torch.Tensor:
        self.tokens(x)
        attn = self.blocks[-1].attn_weights[:, :, 0, 1:].mean(1)
        return attn.reshape(len(x), self.grid, self.grid)

    def gradcam_layer(self):
        grid = self.grid

        def to_map(t: torch.Tensor) -> torch.Tensor:
            return t[:, 1:].transpose(1, 2).reshape(len(t), -1, grid, grid)

        return self.blocks[-1].norm1, to_map


# ---------------------------------------------------------------------------------------- torchvision (paper)
class TorchvisionResNet(nn.Module):
    """torchvision ``resnet18``/``resnet50`` (random init, trained from scratch as in the paper).

    Args:
        arch: ``"resnet18"`` or ``"resnet50"``.
        num_classes: Number of logits.
    """

    def __init__(self, arch: str = "resnet18", num_classes: int = 1000):
        super().__init__()
        self.net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def patch_features(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        fmap = self.feature_map(x)
        return fmap.flatten(2).transpose(1, 2), (fmap.shape[2], fmap.shape[3])

    def gradcam_layer(self):
        return self.net.layer4[-1], None


class TorchvisionViT(nn.Module):
    """torchvision ``vit_b_32`` (random init); keys and CLS attention recomputed from the last block's input.

    Args:
        arch: A torchvision ViT name (``"vit_b_32"``).
        num_classes: Number of logits.
        image_size: Input side length.
    """

    def __init__(self, arch: str = "vit_b_32", num_classes: int = 1000, image_size: int = 224):
        super().__init__()
        self.net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes, image_size=image_size)
        self.grid = image_size // self.net.patch_size
        self._last_in: torch.Tensor | None = None
        self.net.encoder.layers[-1].ln_1.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self._last_in = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _qk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.net(x)
        mha = self.net.encoder.layers[-1].self_attention
        h = self._last_in
        d = h.shape[-1]
        q = F.linear(h, mha.in_proj_weight[:d], mha.in_proj_bias[:d])
        k = F.linear(h, mha.in_proj_weight[d : 2 * d], mha.in_proj_bias[d : 2 * d])
        return q, k

    def patch_features(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        return self._qk(x)[1][:, 1:], (self.grid, self.grid)

    def cls_attention(self, x: torch.Tensor) -> torch.Tensor:
        q, k = self._qk(x)
        mha = self.net.encoder.layers[-1].self_attention
        b, t, d = q.shape
        hd = d // mha.num_heads
        q = q.view(b, t, mha.num_heads, hd).transpose(1, 2)
        k = k.view(b, t, mha.num_heads, hd).transpose(1, 2)
        attn = torch.softmax(q @ k.transpose(-2, -1) * hd**-0.5, dim=-1)[:, :, 0, 1:].mean(1)
        return attn.reshape(b, self.grid, self.grid)

    def gradcam_layer(self):
        grid = self.grid

        def to_map(t: torch.Tensor) -> torch.Tensor:
            return t[:, 1:].transpose(1, 2).reshape(len(t), -1, grid, grid)

        return self.net.encoder.layers[-1].ln_1, to_map


def build_backbone(arch: str, num_classes: int, image_size: int, **kwargs) -> nn.Module:
    """Backbone by name: ``small_resnet``, ``small_vit``, ``resnet18``, ``resnet50``, ``vit_b_32``."""
    if arch == "small_resnet":
        return SmallResNet(num_classes, **kwargs)
    if arch == "small_vit":
        return SmallViT(num_classes, image_size, **kwargs)
    if arch in ("resnet18", "resnet50"):
        return TorchvisionResNet(arch, num_classes)
    if arch.startswith("vit_"):
        return TorchvisionViT(arch, num_classes, image_size)
    raise ValueError(f"unknown arch {arch!r}: small_resnet, small_vit, resnet18, resnet50, vit_b_32")
