"""The two steps' networks and losses (pure torch).

Step 1: encoder -> :class:`HierarchicalResidualHead` (multi-label findings) with class-weighted BCE and an
uncertain-label policy. Step 2: the same encoder -> :class:`CovidHead` (``num_ft -> 128 -> 2``), trained with
class-weighted cross-entropy plus ``lambda * FairKL`` on the 128-d embedding (see :mod:`corsa.fairkl`).
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from corsa.hierarchy import Hierarchy

Encoder = Literal["densenet121", "resnet50", "small_cnn"]
UncertainPolicy = Literal["zeros", "ones", "half", "ignore"]
FineTune = Literal["freeze", "last_block", "full"]


class SmallCNN(nn.Module):
    """A four-block CNN for CPU-scale runs: images ``[B, 1, H, W]`` -> features ``[B, width * 8]``.

    Args:
        width: Channels of the first block (doubled at every block).
    """

    def __init__(self, width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for k in range(4):
            c_out = width * 2**k
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2) if k < 3 else nn.AdaptiveAvgPool2d(1))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.num_features = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[B, num_features]`` of images ``[B, 1, H, W]``."""
        return self.features(x).flatten(1)

    def last_block(self) -> nn.Module:
        """The last convolutional block (what ``finetune="last_block"`` trains)."""
        return nn.ModuleList(list(self.features)[-4:])


class TorchvisionEncoder(nn.Module):
    """DenseNet-121 or ResNet-50 from torchvision with a 1-channel stem and no classifier.

    Args:
        name: ``"densenet121"`` or ``"resnet50"``.
    """

    def __init__(self, name: Literal["densenet121", "resnet50"]):
        super().__init__()
        import torchvision

        self.name = name
        if name == "densenet121":
            net = torchvision.models.densenet121(weights=None)
            net.features.conv0 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
            net.classifier = nn.Identity()
            self.num_features = 1024
        elif name == "resnet50":
            net = torchvision.models.resnet50(weights=None)
            net.conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
            net.fc = nn.Identity()
            self.num_features = 2048
        else:
            raise ValueError(f"unknown torchvision encoder {name!r}")
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[B, num_features]`` of images ``[B, 1, H, W]``."""
        return self.net(x)

    def last_block(self) -> nn.Module:
        """The last dense block (+ final norm) or the last residual stage."""
        if self.name == "densenet121":
            return nn.ModuleList([self.net.features.denseblock4, self.net.features.norm5])
        return self.net.layer4


def build_encoder(name: Encoder, width: int = 16) -> nn.Module:
    """An encoder with a 1-channel input and a ``num_features`` attribute."""
    if name == "small_cnn":
        return SmallCNN(width)
    return TorchvisionEncoder(name)


def load_xrv_densenet(encoder: TorchvisionEncoder, weights: str = "densenet121-res224-all") -> None:
    """Copy torchxrayvision's pretrained DenseNet-121 features into ``encoder`` when they are on disk.

    torchxrayvision downloads weights on first use; this never does: it raises FileNotFoundError naming the file to
    fetch when the weights are not in torchxrayvision's cache folder already.
    """
    import torchxrayvision as xrv

    url = xrv.models.model_urls[weights]["weights_url"]
    path = os.path.join(xrv.utils.get_cache_dir(), url.split("/")[-1])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"torchxrayvision weights {weights} not found at {path}; download them from {url}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.state_dict() if hasattr(state, "state_dict") else state
    feats = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    encoder.net.features.load_state_dict(feats)


class HierarchicalResidualHead(nn.Module):
    """Step-1 head: ``fc1`` predicts the parents; ``fc2`` sees the features and the parent logits, predicts children.

    The features skip past ``fc1`` into ``fc2`` (the residual path), so children are predicted from the image and
    from what the parents say.

    Args:
        num_features: Encoder feature size.
        hierarchy: Which labels are parents and children.
    """

    def __init__(self, num_features: int, hierarchy: Hierarchy):
        super().__init__()
        self.hierarchy = hierarchy
        self.fc1 = nn.Linear(num_features, len(hierarchy.parents))
        self.fc2 = nn.Linear(num_features + len(hierarchy.parents), len(hierarchy.children))
        order = hierarchy.parent_index + hierarchy.child_index
        # Inverse permutation: (parents, children) -> label order.
        self.register_buffer("_to_labels", torch.argsort(torch.tensor(order)), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, L]`` in ``hierarchy.labels`` order from features ``[B, num_features]``."""
        parents = self.fc1(h)
        children = self.fc2(torch.cat([h, parents], 1))
        return torch.cat([parents, children], 1)[:, self._to_labels]


class CovidHead(nn.Module):
    """Step-2 head: ``fc1`` (num_features -> hidden) -> ReLU -> ``fc2`` (hidden -> 2).

    Args:
        num_features: Encoder feature size.
        hidden: Embedding size (128 in the paper); FairKL acts on this embedding.
    """

    def __init__(self, num_features: int, hidden: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(num_features, hidden)
        self.fc2 = nn.Linear(hidden, 2)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, 2], embedding [B, hidden])`` of features ``[B, num_features]``."""
        z = F.relu(self.fc1(h))
        return self.fc2(z), z


def apply_uncertain_policy(labels: torch.Tensor, policy: UncertainPolicy) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and loss mask from CheXpert-coded labels.

    Args:
        labels: ``[B, L]`` with 1 (positive), 0 (negative), -1 (uncertain) and NaN (not mentioned = negative).
        policy: What -1 becomes: ``zeros`` (0), ``ones`` (1), ``half`` (0.5) or ``ignore`` (masked out of the loss).

    Returns:
        ``(targets [B, L] in [0, 1], mask [B, L] float)``.
    """
    labels = torch.nan_to_num(labels.float(), nan=0.0)
    uncertain = labels == -1
    fill = {"zeros": 0.0, "ones": 1.0, "half": 0.5, "ignore": 0.0}
    if policy not in fill:
        raise ValueError(f"uncertain policy must be one of {sorted(fill)}, got {policy!r}")
    targets = torch.where(uncertain, torch.full_like(labels, fill[policy]), labels)
    mask = (~uncertain).float() if policy == "ignore" else torch.ones_like(labels)
    return targets, mask


def positive_weights(targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-class BCE weight of positives, ``#negatives / #positives`` over the training targets ``[N, L]``."""
    mask = torch.ones_like(targets) if mask is None else mask
    pos = (targets * mask).sum(0)
    neg = ((1 - targets) * mask).sum(0)
    return (neg / pos.clamp(min=1)).clamp(min=1e-3)


def weighted_bce(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, pos_weight: torch.Tensor
) -> torch.Tensor:
    """Class-weighted binary cross-entropy averaged over unmasked entries.

    Args:
        logits: ``[B, L]``.
        targets: ``[B, L]`` in [0, 1].
        mask: ``[B, L]`` 1 where the label counts.
        pos_weight: ``[L]`` weight of the positive term per class.
    """
    per = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
    return (per * mask).sum() / mask.sum().clamp(min=1)


def set_finetune(encoder: nn.Module, mode: FineTune) -> None:
    """Freeze the encoder entirely (``freeze``), all but its last block (``last_block``) or nothing (``full``)."""
    if mode not in ("freeze", "last_block", "full"):
        raise ValueError(f"finetune must be freeze, last_block or full, got {mode!r}")
    for p in encoder.parameters():
        p.requires_grad_(mode == "full")
    if mode == "last_block":
        for p in encoder.last_block().parameters():
            p.requires_grad_(True)
