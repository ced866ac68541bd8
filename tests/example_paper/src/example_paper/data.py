"""Data: the real UCI optdigits files from a folder, or the offline sklearn digits (same code after the loader)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from reprokit.data import SplitLoadersMixin, TensorImageDataset, offline_splits, require_dataset, split_indices

OPTDIGITS_HOW = "download optdigits.tra and optdigits.tes from https://archive.ics.uci.edu/dataset/80 into data_dir"


def _read_optdigits(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return torch.from_numpy(table[:, :64] / 16.0).view(-1, 1, 8, 8), torch.from_numpy(table[:, 64].astype(np.int64))


class DigitsDataModule(SplitLoadersMixin, pl.LightningDataModule):
    """8x8 digits.

    Args:
        source: ``"offline"`` (sklearn's bundled digits, the CPU-scale analogue) or ``"real"`` (UCI optdigits files).
        data_dir: Folder with ``optdigits.tra`` and ``optdigits.tes`` (``source="real"``).
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size.
        split_seed: Seed of the fixed train/val/test split (not the training seed).
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        source: Literal["offline", "real"] = "offline",
        data_dir: str | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        split_seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()

    def _root(self) -> Path:
        return require_dataset(
            self.hparams.data_dir, "UCI optdigits", OPTDIGITS_HOW, ["optdigits.tra", "optdigits.tes"]
        )

    def prepare_data(self) -> None:
        # Runs before any run folder is written, so a missing dataset leaves nothing behind.
        if self.hparams.source == "real":
            self._root()

    def setup(self, stage: str | None = None) -> None:
        if self.hparams.source == "offline":
            self.train_set, self.val_set, self.test_set = offline_splits(
                "digits", (0.6, 0.2, 0.2), self.hparams.split_seed
            )
            return
        self.root = self._root()
        x, y = _read_optdigits(self.root / "optdigits.tra")
        train_idx, val_idx = split_indices(len(y), (0.85, 0.15), self.hparams.split_seed)
        self.train_set, self.val_set = (
            TensorImageDataset(x[train_idx], y[train_idx]),
            TensorImageDataset(x[val_idx], y[val_idx]),
        )
        self.test_set = TensorImageDataset(*_read_optdigits(self.root / "optdigits.tes"))
