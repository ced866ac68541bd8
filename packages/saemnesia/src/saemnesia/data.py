"""DataModules: images of objects in styles (offline toy world or real UnlearnCanvas) and SAE activation stores."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from reprokit.data import make_loader, require_dataset, split_indices
from torch.utils.data import Dataset, TensorDataset

from saemnesia.hooks import ActivationStore
from saemnesia.toyworld import OBJECTS, STYLE_NAMES, grid_labels, render

UNLEARNCANVAS_HOW = (
    "download UnlearnCanvas (https://github.com/OPTML-Group/UnlearnCanvas, Hugging Face dataset "
    "OPTML-Group/UnlearnCanvas) and point data_dir at the folder holding <Style>/<Object>/<n>.jpg"
)
STORE_HOW = (
    "build it first: `saemnesia reproduce --scale cpu` writes the offline stores under runs/saemnesia/cache/, and "
    "saemnesia.reproduce.cache_activations() writes one from any diffusers UNet (SD1.5 at paper scale)"
)


@functools.lru_cache(maxsize=8)
def toy_split(per_combo: int, size: int, seed: int, offset: int) -> TensorDataset:
    """``per_combo`` images of every (object, style) pair; items ``offset..`` of the jitter stream of ``seed``."""
    objects, styles = grid_labels(per_combo)
    images = render(objects, styles, size, seed, index=torch.arange(len(objects)) + offset)
    return TensorDataset(images, objects, styles)


class UnlearnCanvasFolder(Dataset):
    """``<Style>/<Object>/*.jpg`` images resized to ``size``; items ``(image [3, size, size], object, style)``."""

    def __init__(self, root: Path, size: int):
        from PIL import Image  # noqa: F401  (fail early if pillow is missing)

        self.files = sorted(root.glob("*/*/*.jpg")) + sorted(root.glob("*/*/*.png"))
        self.styles = sorted({f.parts[-3] for f in self.files})
        self.objects = sorted({f.parts[-2] for f in self.files})
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        f = self.files[i]
        image = Image.open(f).convert("RGB").resize((self.size, self.size), Image.BICUBIC)
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return tensor, self.objects.index(f.parts[-2]), self.styles.index(f.parts[-3])


class ToyWorldDataModule(pl.LightningDataModule):
    """Images with object and style labels; batches ``(images [B, 3, H, W] in [0, 1], objects [B], styles [B])``.

    Args:
        source: ``"offline"`` (procedural toy world, the CPU-scale analogue) or ``"real"`` (UnlearnCanvas folder).
        data_dir: UnlearnCanvas folder (``source="real"``).
        per_combo: Training images per (object, style) pair (offline).
        eval_per_combo: Validation and test images per pair (offline).
        image_size: Side length in pixels.
        batch_size: Batch size.
        seed: Seed of the drawing jitter and of the shuffling.
    """

    def __init__(
        self,
        source: Literal["offline", "real"] = "offline",
        data_dir: str | None = None,
        per_combo: int = 40,
        eval_per_combo: int = 4,
        image_size: int = 16,
        batch_size: int = 32,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()

    def _root(self) -> Path:
        return require_dataset(self.hparams.data_dir, "UnlearnCanvas", UNLEARNCANVAS_HOW, ["*/*"])

    def prepare_data(self) -> None:
        if self.hparams.source == "real":
            self._root()

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if h.source == "real":
            full = UnlearnCanvasFolder(self._root(), h.image_size)
            parts = split_indices(len(full), (0.9, 0.05, 0.05), h.seed)
            self.train_set, self.val_set, self.test_set = (torch.utils.data.Subset(full, p.tolist()) for p in parts)
            return
        combos = len(OBJECTS) * len(STYLE_NAMES)
        n_train, per = h.per_combo * combos, h.eval_per_combo * combos
        self.train_set = toy_split(h.per_combo, h.image_size, h.seed, 0)
        self.val_set = toy_split(h.eval_per_combo, h.image_size, h.seed, n_train)
        self.test_set = toy_split(h.eval_per_combo, h.image_size, h.seed, n_train + per)

    def train_dataloader(self):
        return make_loader(self.train_set, self.hparams.batch_size, shuffle=True, seed=self.hparams.seed)

    def val_dataloader(self):
        return make_loader(self.val_set, 256, shuffle=False)

    def test_dataloader(self):
        return make_loader(self.test_set, 256, shuffle=False)


class ActivationDataModule(pl.LightningDataModule):
    """Items of an activation store: ``(acts [B, T, d], labels [B, 3])`` with labels ``(object, style, timestep)``.

    Args:
        data_dir: Store folder (``index.json`` + chunks).
        batch_size: Items (images x timesteps) per batch; tokens per batch = ``batch_size * T``.
        val_fraction: Held-out share of the items.
        seed: Split and shuffling seed.
    """

    def __init__(self, data_dir: str | None = None, batch_size: int = 16, val_fraction: float = 0.1, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()

    def _root(self) -> Path:
        return require_dataset(self.hparams.data_dir, "SAE activation store", STORE_HOW, ["index.json"])

    def prepare_data(self) -> None:
        self._root()

    def setup(self, stage: str | None = None) -> None:
        self.store = ActivationStore(self._root())
        train, val = split_indices(
            len(self.store), (1 - self.hparams.val_fraction, self.hparams.val_fraction), self.hparams.seed
        )
        self.train_set = torch.utils.data.Subset(self.store, train.tolist())
        self.val_set = torch.utils.data.Subset(self.store, val.tolist())

    def train_dataloader(self):
        return make_loader(self.train_set, self.hparams.batch_size, shuffle=True, seed=self.hparams.seed)

    def val_dataloader(self):
        return make_loader(self.val_set, 64, shuffle=False)

    def test_dataloader(self):
        return self.val_dataloader()
