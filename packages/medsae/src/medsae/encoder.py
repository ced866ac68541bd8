"""Image encoders whose embeddings the SAEs dissect, the embedding normalisation, and the on-disk activation store.

``MedCLIPVisionEncoder`` is MedCLIP-RN50's image tower (torchvision ResNet50 whose ``fc`` is a bias-free
``Linear(2048, 512)``; output L2-normalised). ``SmallCXREncoder`` has the same head on a small CNN for the offline
CPU analogue. ``ActivationStore`` keeps ``[N, d]`` embeddings and ``[N, C]`` labels in memory-mapped ``.npy`` files
written chunk by chunk, so a dataset larger than RAM streams from disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# MedCLIP's own image preprocessing constants (grey-level mean/std of its training chest X-rays).
MEDCLIP_MEAN, MEDCLIP_STD = 0.5862785803043838, 0.27950088968644304


class MedCLIPVisionEncoder(nn.Module):
    """MedCLIP-RN50 image encoder: ``[B, 3, 224, 224]`` -> L2-normalised ``[B, 512]``.

    Args:
        embed_dim: Width of the bias-free projection (512 in MedCLIP).
    """

    def __init__(self, embed_dim: int = 512):
        super().__init__()
        from torchvision.models import resnet50

        self.model = resnet50(weights=None)
        self.model.fc = nn.Linear(2048, embed_dim, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[B, embed_dim]`` of images ``[B, 3, H, W]`` (grey images are repeated to 3 channels)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images [B, 1 or 3, H, W], got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return F.normalize(self.model(images), dim=-1)


def load_medclip_weights(encoder: MedCLIPVisionEncoder, path: str | os.PathLike) -> MedCLIPVisionEncoder:
    """Load MedCLIP's vision weights from its checkpoint file (``pytorch_model.bin`` of the MedCLIP zip).

    The file holds the whole MedCLIPModel (``vision_model.model.*``, ``text_model.*``, ``logit_scale``); the text
    tower's ``position_ids`` buffer is why the pip release fails with strict loading. Only the vision keys are read
    here, and every one of them must be present.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: The file has no (or not all) MedCLIP vision weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MedCLIP checkpoint '{path}' does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    prefix = "vision_model."
    vision = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not vision:  # a bare vision-tower state dict
        vision = {k: v for k, v in state.items() if k.startswith("model.")}
    missing = sorted(set(encoder.state_dict()) - set(vision))
    if missing:
        raise ValueError(f"'{path}' lacks MedCLIP vision weights: {', '.join(missing[:3])} ({len(missing)} missing)")
    encoder.load_state_dict(vision, strict=False)
    return encoder


def medclip_from_package() -> MedCLIPVisionEncoder:  # pragma: no cover - needs the internet and the medclip package
    """MedCLIP-RN50 through the ``medclip`` package (downloads its weights; needs internet)."""
    from medclip import MedCLIPModel, MedCLIPVisionModel

    model = MedCLIPModel(vision_cls=MedCLIPVisionModel)
    model.from_pretrained()
    encoder = MedCLIPVisionEncoder()
    encoder.model.load_state_dict(model.vision_model.model.state_dict())
    return encoder


class HFImageEncoder(nn.Module):
    """Any transformers CLIP-style model's image tower (``get_image_features``), L2-normalised.

    Covers OpenAI CLIP-RN50-like and ViT CLIP checkpoints on the hub or in a local folder (``model_id``). Inputs
    are images already resized to the model's resolution and standardised; grey images are repeated to 3 channels.

    Args:
        model_id: Hub id or local folder of a model with ``get_image_features`` (``CLIPModel``, ``SiglipModel`` ...).
    """

    def __init__(self, model_id: str):
        super().__init__()
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(model_id)
        if not hasattr(self.model, "get_image_features"):
            raise ValueError(f"'{model_id}' ({type(self.model).__name__}) has no image tower (get_image_features)")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[B, d]`` of images ``[B, 1 or 3, H, W]``."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        out = self.model.get_image_features(pixel_values=images)
        out = out if isinstance(out, torch.Tensor) else out.pooler_output
        return F.normalize(out, dim=-1)


class SmallCXREncoder(nn.Module):
    """A small CNN with MedCLIP's head (bias-free projection, L2 norm) for the offline analogue.

    Args:
        embed_dim: Embedding width ``d``.
        width: Channels of the first convolution (doubled at each of the 4 stages).
        in_channels: Image channels.
    """

    def __init__(self, embed_dim: int = 64, width: int = 16, in_channels: int = 1):
        super().__init__()
        layers, c = [], in_channels
        for i in range(4):
            out = width * 2**i
            layers += [nn.Conv2d(c, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(c, embed_dim, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings ``[B, d]`` of images ``[B, C, H, W]``."""
        return F.normalize(self.proj(self.features(images)), dim=-1)


def normalisation_stats(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Mean ``[d]`` and scale such that ``(x - mean) * scale`` has ``E|x|^2 = d`` (computed on ``x`` ``[N, d]``)."""
    x = x.double()
    mean = x.mean(0)
    scale = (x.shape[1] / (x - mean).pow(2).sum(1).mean()).sqrt()
    return mean.float(), float(scale)


# ------------------------------------------------------------------------------------------------ activation store
class ActivationStore:
    """Embeddings ``[N, d]`` (float32) and labels ``[N, C]`` (uint8) as memory-mapped ``.npy`` files.

    Layout: ``<root>/embeddings.npy``, ``<root>/labels.npy``, ``<root>/meta.json`` (written last: a store without it
    is incomplete and gets rebuilt).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def complete(self) -> bool:
        """Whether a finished store is at ``root``."""
        return (self.root / "meta.json").is_file()

    def write(
        self,
        chunks: Iterable[tuple[torch.Tensor, torch.Tensor]],
        n: int,
        dim: int,
        num_labels: int,
        meta: dict | None = None,
    ) -> ActivationStore:
        """Write ``n`` rows arriving as ``(embeddings [b, d], labels [b, C])`` chunks, then ``meta.json``."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "meta.json").unlink(missing_ok=True)
        emb = np.lib.format.open_memmap(self.root / "embeddings.npy", mode="w+", dtype=np.float32, shape=(n, dim))
        lab = np.lib.format.open_memmap(self.root / "labels.npy", mode="w+", dtype=np.uint8, shape=(n, num_labels))
        row = 0
        for e, y in chunks:
            b = e.shape[0]
            if row + b > n:
                raise ValueError(f"activation store: more than the announced {n} rows")
            emb[row : row + b] = e.detach().float().cpu().numpy()
            lab[row : row + b] = y.detach().cpu().numpy().astype(np.uint8)
            row += b
        if row != n:
            raise ValueError(f"activation store: got {row} rows, announced {n}")
        emb.flush()
        lab.flush()
        del emb, lab
        tmp = self.root / "meta.json.tmp"
        tmp.write_text(json.dumps({"n": n, "dim": dim, "num_labels": num_labels, **(meta or {})}, indent=2))
        os.replace(tmp, self.root / "meta.json")
        return self

    def meta(self) -> dict:
        """The store's ``meta.json``."""
        return json.loads((self.root / "meta.json").read_text())

    def embeddings(self) -> np.ndarray:
        """Read-only memory map ``[N, d]``."""
        return np.load(self.root / "embeddings.npy", mmap_mode="r")

    def labels(self) -> np.ndarray:
        """Read-only memory map ``[N, C]``."""
        return np.load(self.root / "labels.npy", mmap_mode="r")


class EmbeddingDataset(torch.utils.data.Dataset):
    """Rows of an activation store, normalised on the fly; batched reads through ``__getitems__``.

    Items are dicts ``{"x": [d] normalised embedding, "y": [C] float labels, "index": int}``; with
    :func:`collate_batch` a DataLoader reads a whole batch with one fancy-indexing call on the memory map.

    Args:
        store: The activation store.
        indices: Rows of the store in this split ``[n]``.
        mean: Normalisation mean ``[d]``.
        scale: Normalisation scale.
    """

    def __init__(self, store: ActivationStore, indices: torch.Tensor, mean: torch.Tensor, scale: float):
        self.emb, self.lab = store.embeddings(), store.labels()
        self.indices, self.mean, self.scale = indices.long(), mean, scale

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        rows = self.indices[torch.as_tensor(positions)]
        order = rows.argsort()  # memory maps read fastest in increasing order
        sorted_rows = rows[order].numpy()
        inverse = order.argsort()
        x = torch.from_numpy(np.ascontiguousarray(self.emb[sorted_rows]))[inverse]
        y = torch.from_numpy(np.ascontiguousarray(self.lab[sorted_rows]))[inverse]
        return {"x": (x - self.mean) * self.scale, "y": y.float(), "index": rows}

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        batch = self.__getitems__([position])
        return {k: v[0] for k, v in batch.items()}


def collate_batch(batch):
    """Pass-through collate for :meth:`EmbeddingDataset.__getitems__` (already a batch dict)."""
    if isinstance(batch, dict):
        return batch
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}
