"""Data: UniToChest DICOM series from a folder, or the offline CT phantom written as DICOM (same code after that).

Both sources are a folder of ``<patient>/<scan>/`` series (``*.dcm`` plus ``mask.nii.gz`` or ``masks/*.png``);
scans are read, ordered, converted to HU, windowed to 8 bit and cached, split by patient, and served as 2D slices.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
from reprokit.data import make_loader, require_dataset
from torch.utils.data import Dataset

from lung_seg.phantom import GENERATOR_VERSION, PhantomConfig, write_dataset
from lung_seg.preprocess import Scan, cached_scan, patient_split, scan_folders, select_slices

UNITOCHEST = "UniToChest"
UNITOCHEST_HOW = (
    "download UniToChest from https://zenodo.org/records/5797912 and arrange it as <data_dir>/<patient>/<scan>/*.dcm "
    "with the nodule masks as <scan>/masks/<dicom stem>.png (or <scan>/mask.nii.gz); an optional "
    "<data_dir>/splits.json {'train': [...], 'val': [...], 'test': [...]} of '<patient>/<scan>' names fixes the split"
)
CACHE_ENV = "LUNG_SEG_CACHE"


def cache_root() -> Path:
    """Where phantoms and preprocessed scans are cached: ``$LUNG_SEG_CACHE`` or ``~/.cache/lung_seg``."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "lung_seg"))


def ensure_phantom(cfg: PhantomConfig, patients: int, seed: int, root: Path | None = None) -> Path:
    """The folder of a phantom dataset, written once (atomically) and reused; keyed by its parameters."""
    key = json.dumps({"v": GENERATOR_VERSION, "cfg": asdict(cfg), "patients": patients, "seed": seed}, sort_keys=True)
    base = Path(root) if root is not None else cache_root()
    target = base / f"phantom-{hashlib.sha1(key.encode()).hexdigest()[:16]}"
    if (target / "phantom.json").is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=base, prefix=".phantom-"))
    try:
        write_dataset(tmp, cfg, patients, seed)
        (tmp / "phantom.json").write_text(key)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same phantom first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class SliceDataset(Dataset):
    """Axial slices of preprocessed scans.

    Args:
        scans: The scans.
        pairs: ``(scan index, slice index)`` of every item.
        with_index: Also return the item's index (the training set: it seeds the item's augmentation).
    """

    def __init__(self, scans: list[Scan], pairs: list[tuple[int, int]], with_index: bool = False):
        self.scans, self.pairs, self.with_index = scans, pairs, with_index

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        """Image ``[1, H, W]`` float in [0, 1], mask ``[1, H, W]`` float 0/1 (and ``index`` when ``with_index``)."""
        s, z = self.pairs[index]
        scan = self.scans[s]
        image = torch.from_numpy(scan.image[z]).float().div_(255.0).unsqueeze(0)
        mask = torch.from_numpy(scan.mask[z]).float().unsqueeze(0)
        return (image, mask, torch.tensor(index)) if self.with_index else (image, mask)


class LungCTDataModule(pl.LightningDataModule):
    """CT slices with nodule masks, split by patient.

    Args:
        source: ``"offline"`` (the CT phantom, the CPU-scale analogue) or ``"real"`` (UniToChest from ``data_dir``).
        data_dir: UniToChest root (``source="real"``); for ``"offline"``, where to write the phantom (default: the
            cache folder, ``$LUNG_SEG_CACHE`` or ``~/.cache/lung_seg``).
        image_size: Expected slice size (rows = columns); scans of another size are an error.
        split: Patient fractions for train/val/test when the data has no ``splits.json``.
        split_seed: Seed of the patient split and of the shuffling order.
        empty_fraction: Empty slices added per nodule slice (the paper: 0; its PyTorch baseline: 0.1).
        small_nodule_mm: Nodules below this equivalent diameter count as small for ``small_nodule_repeat``.
        small_nodule_repeat: Training slices that cut a small nodule are served this many times per epoch
            (1 = no oversampling, as the paper).
        window_center: VOI window centre in HU.
        window_width: VOI window width in HU.
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size.
        num_workers: DataLoader workers.
        phantom_patients: Phantom patients (1-2 scans each).
        phantom_matrix: Phantom slice size (pixels).
        phantom_slices: Phantom slices per scan.
        phantom_fov_mm: Phantom field of view (mm).
        phantom_slice_mm: Phantom slice spacing (mm).
        phantom_nodules: Nodules per phantom scan.
        phantom_seed: Seed of the phantom generator.
    """

    def __init__(
        self,
        source: Literal["offline", "real"] = "offline",
        data_dir: str | None = None,
        image_size: int = 96,
        split: tuple[float, float, float] = (0.6, 0.15, 0.25),
        split_seed: int = 0,
        empty_fraction: float = 0.0,
        small_nodule_mm: float = 10.0,
        small_nodule_repeat: int = 1,
        window_center: float = -500.0,
        window_width: float = 1600.0,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        phantom_patients: int = 12,
        phantom_matrix: int = 96,
        phantom_slices: int = 32,
        phantom_fov_mm: float = 240.0,
        phantom_slice_mm: float = 2.5,
        phantom_nodules: int = 4,
        phantom_seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()

    # ------------------------------------------------------------------------------------------------ locating data
    @property
    def phantom_config(self) -> PhantomConfig:
        """The generator settings of the offline phantom."""
        h = self.hparams
        return PhantomConfig(
            matrix=h.phantom_matrix,
            slices=h.phantom_slices,
            fov_mm=h.phantom_fov_mm,
            slice_mm=h.phantom_slice_mm,
            nodules=h.phantom_nodules,
        )

    def _root(self) -> Path:
        h = self.hparams
        if h.source == "real":
            return require_dataset(h.data_dir, UNITOCHEST, UNITOCHEST_HOW, ["*/*/*.dcm"])
        return ensure_phantom(self.phantom_config, h.phantom_patients, h.phantom_seed, h.data_dir)

    def prepare_data(self) -> None:
        # Runs before any run folder is written, so a missing dataset leaves nothing behind.
        self._root()

    def split_names(self) -> dict[str, list[str]]:
        """``{"train": [...], "val": [...], "test": [...]}`` of ``<patient>/<scan>`` names."""
        root = self._root()
        names = [str(f.relative_to(root)) for f in scan_folders(root)]
        if (root / "splits.json").is_file():
            return {k: list(v) for k, v in json.loads((root / "splits.json").read_text()).items()}
        return dict(zip(("train", "val", "test"), patient_split(names, self.hparams.split, self.hparams.split_seed)))

    def load_scans(self, names: list[str]) -> list[Scan]:
        """Preprocessed scans (from the cache when possible), checked against ``image_size``."""
        root, h = self._root(), self.hparams
        scans = [cached_scan(root / n, root, cache_root() / "slices", h.window_center, h.window_width) for n in names]
        for scan in scans:
            if scan.image.shape[1:] != (h.image_size, h.image_size):
                raise ValueError(
                    f"{root / scan.name}: slices are {scan.image.shape[1:]}, but image_size is "
                    f"{h.image_size} (set --data.init_args.image_size)"
                )
        return scans

    def setup(self, stage: str | None = None) -> None:
        self.names = self.split_names()
        h = self.hparams
        self.datasets: dict[str, SliceDataset] = {}
        for split in ("train", "val", "test"):
            scans = self.load_scans(self.names.get(split, []))
            train = split == "train"
            # Oversampling changes what the network sees, never what it is scored on.
            repeat = h.small_nodule_repeat if train else 1
            pairs = select_slices(scans, h.empty_fraction, h.split_seed, h.small_nodule_mm, repeat)
            self.datasets[split] = SliceDataset(scans, pairs, with_index=train)

    # -------------------------------------------------------------------------------------------------- loaders
    def train_dataloader(self):
        return make_loader(
            self.datasets["train"],
            self.hparams.batch_size,
            shuffle=True,
            seed=self.hparams.split_seed,
            num_workers=self.hparams.num_workers,
        )

    def val_dataloader(self):
        return make_loader(
            self.datasets["val"], self.hparams.eval_batch_size, shuffle=False, num_workers=self.hparams.num_workers
        )

    def test_dataloader(self):
        return make_loader(
            self.datasets["test"], self.hparams.eval_batch_size, shuffle=False, num_workers=self.hparams.num_workers
        )
