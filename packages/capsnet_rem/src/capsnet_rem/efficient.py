"""ICIP 2022: capsule heads on structurally pruned backbones (pure torch, no Lightning, no I/O).

A backbone (torchvision ResNet, or the MobileNetV1 written here) is pruned to a FLOPs target by L1-norm filter
ranking with one keep-ratio for every prunable layer (found by bisection on FLOPs counted with
``torch.utils.flop_counter``). Its last feature map feeds a primary-capsule convolution whose kernel covers the
whole map, with ``channels // 8`` capsule types of 8 dimensions, then class capsules with dynamic routing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from capsnet_rem.capsules import CapsOutput, ClassCapsules, PrimaryCapsules

# (output channels, stride) of MobileNetV1's 13 depthwise-separable blocks.
MOBILENET_V1 = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 feature extractor (Howard et al. 2017): a 3x3 stem and 13 depthwise-separable blocks.

    Args:
        in_channels: Image channels.
        width_mult: Multiplier of every layer's width.
        stem_stride: Stride of the stem (2 on ImageNet; 1 keeps small images from vanishing).
        max_blocks: Use only the first blocks (a shallower network for tiny inputs).
    """

    def __init__(self, in_channels: int = 3, width_mult: float = 1.0, stem_stride: int = 2, max_blocks: int = 13):
        super().__init__()
        width = max(8, int(32 * width_mult))
        self.stem = _conv_bn(in_channels, width, 3, stem_stride)
        blocks = []
        for out, stride in MOBILENET_V1[:max_blocks]:
            out = max(8, int(out * width_mult))
            blocks.append(nn.Sequential(_conv_bn(width, width, 3, stride, groups=width), _conv_bn(width, out, 1, 1)))
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[B, C, h, w]`` of images ``[B, in_channels, H, W]``."""
        return self.blocks(self.stem(x))


class ResNetFeatures(nn.Module):
    """A torchvision ResNet without its pooling and classifier.

    Args:
        arch: ``resnet18`` or ``resnet50`` (any torchvision ResNet name).
        in_channels: Image channels (a non-RGB stem is freshly initialised).
        pretrained: Load torchvision's ImageNet weights (downloads them on first use).
        small_input: 3x3 stride-1 stem without max-pool, for 28-64 px images.
    """

    def __init__(
        self, arch: str = "resnet50", in_channels: int = 3, pretrained: bool = False, small_input: bool = False
    ):
        super().__init__()
        import torchvision

        net = torchvision.models.get_model(arch, weights="DEFAULT" if pretrained else None)
        if small_input or in_channels != 3:
            net.conv1 = nn.Conv2d(
                in_channels,
                net.conv1.out_channels,
                3 if small_input else 7,
                1 if small_input else 2,
                1 if small_input else 3,
                bias=False,
            )
        if small_input:
            net.maxpool = nn.Identity()
        self.body = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
        )

    @property
    def out_channels(self) -> int:
        """Channels of the last feature map."""
        last = self.body[-1][-1]
        return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[B, C, h, w]``."""
        return self.body(x)


# ----------------------------------------------------------------------------------------------- channel pruning
def _top_l1(conv: nn.Conv2d, keep: int) -> torch.Tensor:
    """Indices (sorted) of the ``keep`` output filters of ``conv`` with the largest L1 norm."""
    norms = conv.weight.detach().abs().flatten(1).sum(1)
    return norms.topk(keep).indices.sort().values


def _slice_conv(conv: nn.Conv2d, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> nn.Conv2d:
    depthwise = conv.groups == conv.in_channels and conv.groups > 1
    w = conv.weight.detach()
    if out_idx is not None:
        w = w[out_idx]
    if in_idx is not None and not depthwise:
        w = w[:, in_idx]
    groups = w.shape[0] if depthwise else conv.groups
    new = nn.Conv2d(
        w.shape[1] * groups,
        w.shape[0],
        conv.kernel_size,
        conv.stride,
        conv.padding,
        groups=groups,
        bias=conv.bias is not None,
    ).to(w.device, w.dtype)
    new.weight.data.copy_(w)
    if conv.bias is not None:
        new.bias.data.copy_(conv.bias.detach() if out_idx is None else conv.bias.detach()[out_idx])
    return new


def _slice_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(idx), bn.eps, bn.momentum).to(bn.weight.device, bn.weight.dtype)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new, name).data.copy_(getattr(bn, name).detach()[idx])
    return new


def _n(channels: int, ratio: float) -> int:
    return max(8, min(channels, round(channels * ratio)))


@torch.no_grad()
def prune_mobilenet(net: MobileNetV1, ratio: float) -> MobileNetV1:
    """A copy of ``net`` keeping ``ratio`` of the stem's and every pointwise layer's filters (largest L1 norm)."""
    net = copy.deepcopy(net)
    producers = [net.stem] + [block[1] for block in net.blocks]
    keep = None
    for k, prod in enumerate(producers):
        conv, bn = prod[0], prod[1]
        if keep is not None:  # consumers of the previous producer: this block's depthwise conv and this conv
            dw = net.blocks[k - 1][0]
            dw[0], dw[1] = _slice_conv(dw[0], keep, keep), _slice_bn(dw[1], keep)
            conv = prod[0] = _slice_conv(conv, None, keep)
        keep = _top_l1(conv, _n(conv.out_channels, ratio))
        prod[0], prod[1] = _slice_conv(conv, keep), _slice_bn(bn, keep)
    net.out_channels = len(keep)
    return net


@torch.no_grad()
def prune_resnet(net: ResNetFeatures, ratio: float) -> ResNetFeatures:
    """A copy of ``net`` keeping ``ratio`` of every block's inner filters and of the last stage's output channels.

    Inner channels (conv1, and conv2 of bottlenecks) are ranked per layer; the last stage's residual channels are
    ranked by the summed L1 norms of every convolution writing into the residual stream of that stage, which sets
    the number of primary capsules of the head.
    """
    net = copy.deepcopy(net)
    for layer in net.body[4:]:
        for block in layer:
            inner = ["conv1", "conv2"] if hasattr(block, "conv3") else ["conv1"]
            for name in inner:
                conv = getattr(block, name)
                keep = _top_l1(conv, _n(conv.out_channels, ratio))
                bn_name = "bn" + name[-1]
                setattr(block, name, _slice_conv(conv, keep))
                setattr(block, bn_name, _slice_bn(getattr(block, bn_name), keep))
                nxt = "conv" + str(int(name[-1]) + 1)
                setattr(block, nxt, _slice_conv(getattr(block, nxt), None, keep))
    last = net.body[-1]
    writers = [(b, "conv3" if hasattr(b, "conv3") else "conv2") for b in last]
    norms = sum(getattr(b, n).weight.detach().abs().flatten(1).sum(1) for b, n in writers)
    down = last[0].downsample
    if down is not None:
        norms = norms + down[0].weight.detach().abs().flatten(1).sum(1)
    keep = norms.topk(_n(len(norms), ratio)).indices.sort().values
    for i, (block, name) in enumerate(writers):
        bn_name = "bn" + name[-1]
        setattr(block, name, _slice_conv(getattr(block, name), keep))
        setattr(block, bn_name, _slice_bn(getattr(block, bn_name), keep))
        if i > 0:
            block.conv1 = _slice_conv(block.conv1, None, keep)
    if down is not None:
        down[0], down[1] = _slice_conv(down[0], keep), _slice_bn(down[1], keep)
    elif len(keep) != writers[0][0].conv1.in_channels:
        raise ValueError("the last stage has no projection shortcut; its residual width cannot be pruned alone")
    return net


def count_flops(module: nn.Module, in_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on a single input of shape ``in_shape`` (``torch.utils.flop_counter``)."""
    param = next(module.parameters())
    x = torch.zeros(1, *in_shape, device=param.device, dtype=param.dtype)
    was_training = module.training
    module.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    module.train(was_training)
    return int(counter.get_total_flops())


def prune_to_flops(
    net: nn.Module,
    prune: Callable[[nn.Module, float], nn.Module],
    target: float,
    in_shape: tuple[int, ...],
    steps: int = 12,
) -> tuple[nn.Module, float, float]:
    """Prune ``net`` with the keep-ratio whose FLOPs come closest to ``target`` times the dense FLOPs from below.

    Returns:
        The pruned copy, the keep-ratio, and the FLOPs reached as a fraction of the dense network's.
    """
    dense = count_flops(net, in_shape)
    if target >= 1.0:
        return copy.deepcopy(net), 1.0, 1.0
    lo, hi = 0.0, 1.0
    best = None
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        cand = prune(net, mid)
        frac = count_flops(cand, in_shape) / dense
        if frac <= target:
            lo, best = mid, (cand, mid, frac)
        else:
            hi = mid
    if best is None:
        cand = prune(net, lo)
        best = (cand, lo, count_flops(cand, in_shape) / dense)
    return best


# ----------------------------------------------------------------------------------------------------- the model
class BackboneCapsNet(nn.Module):
    """Capsule head on a (pruned) backbone: primary capsules over the whole feature map, class capsules, routing.

    Args:
        backbone: ``mobilenet_v1`` or a torchvision ResNet name (``resnet18``, ``resnet50``).
        in_shape: Image shape ``(C, H, W)``.
        num_classes: Class capsules.
        flops_ratio: Remaining backbone FLOPs after structured pruning (1.0: dense).
        pretrained: torchvision ImageNet weights for ResNets (downloaded on first use).
        init_from: A Lightning checkpoint whose ``net.backbone.*`` weights are loaded before pruning (a dense
            backbone trained earlier), or None.
        width_mult: MobileNetV1 width multiplier.
        max_blocks: MobileNetV1 blocks used.
        small_input: Small-image stems (stride-1 MobileNet stem; 3x3 ResNet stem without max-pool).
        freeze_backbone: Train only the capsule head (backbone in eval mode, no gradients).
        primary_types: Primary capsule types (None: ``channels // 8``, the ICIP rule).
        primary_dims: Primary capsule dimensions.
        primary_kernel: Primary capsule kernel (None: the whole feature map, one capsule per type).
        class_dims: Class capsule dimensions.
        routing_iterations: Routing iterations.
        bn_momentum: BatchNorm momentum of the backbone (larger for runs of a few steps; None: cumulative average).
    """

    def __init__(
        self,
        backbone: Literal["mobilenet_v1", "resnet18", "resnet34", "resnet50"] = "mobilenet_v1",
        in_shape: tuple[int, int, int] = (3, 64, 64),
        num_classes: int = 10,
        flops_ratio: float = 1.0,
        pretrained: bool = False,
        init_from: str | None = None,
        width_mult: float = 1.0,
        max_blocks: int = 13,
        small_input: bool = False,
        freeze_backbone: bool = False,
        primary_types: int | None = None,
        primary_dims: int = 8,
        primary_kernel: int | None = None,
        class_dims: int = 16,
        routing_iterations: int = 3,
        bn_momentum: float | None = 0.1,
    ):
        super().__init__()
        self.in_shape = tuple(in_shape)
        if backbone == "mobilenet_v1":
            body: nn.Module = MobileNetV1(in_shape[0], width_mult, 1 if small_input else 2, max_blocks)
            prune = prune_mobilenet
        else:
            body = ResNetFeatures(backbone, in_shape[0], pretrained, small_input)
            prune = prune_resnet
        if init_from is not None:
            state = torch.load(init_from, map_location="cpu", weights_only=True)["state_dict"]
            body.load_state_dict(
                {k[len("net.backbone.") :]: v for k, v in state.items() if k.startswith("net.backbone.")}
            )
        self.backbone, self.keep_ratio, self.flops_reached = prune_to_flops(body, prune, flops_ratio, self.in_shape)
        for m in self.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = bn_momentum
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        channels = self.backbone.out_channels
        with torch.no_grad():
            fmap = self.backbone.eval()(torch.zeros(1, *self.in_shape)).shape[-2:]
        self.backbone.train()
        kernel = primary_kernel or fmap[0]
        types = primary_types or channels // 8
        self.primary = PrimaryCapsules(channels, types, primary_dims, kernel, 1)
        grid = (fmap[0] - kernel + 1) * (fmap[1] - kernel + 1)
        self.caps = ClassCapsules(types * grid, primary_dims, num_classes, class_dims, routing_iterations)

    def train(self, mode: bool = True) -> BackboneCapsNet:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # frozen BatchNorm statistics too
        return self

    @property
    def num_primary(self) -> int:
        """Number of primary capsules."""
        return self.caps.in_caps

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> CapsOutput:
        """Class capsules of images ``[B, C, H, W]`` (``target`` is unused: there is no decoder)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"expected images [B, {', '.join(map(str, self.in_shape))}], got {tuple(x.shape)}")
        poses, coupling = self.caps(self.primary(self.backbone(x)))
        return CapsOutput(poses.norm(dim=-1), poses, coupling, None)

    def pruning_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Every parameter that trains."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]
