"""Data for both steps: the paper's datasets (CheXpert, CORDA) from a folder, or the offline analogue.

The offline analogue draws chest-X-ray-like images with :mod:`reprokit.cxr` (real lung shapes from the
torchxrayvision wheel, exact findings). Step 2's offline set makes the "hospital" (an acquisition style: intensity
curve, noise, corner marker, collimation) predictive of the COVID label in the training pool (``bias_strength``) and
independent of it in the test set, so a classifier that learns the hospital instead of the lungs fails on the
bias-conflicting test cases. Both paths yield the same batches: ``(image, target)`` for step 1 and
``(image, target, hospital)`` for step 2, images normalised with the paper's mean/std.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from reprokit import cxr
from reprokit.data import make_loader, require_dataset
from torch.nn import functional as F
from torch.utils.data import Dataset

from corsa.folds import patient_folds
from corsa.hierarchy import CHEXPERT_LABELS, offline_targets

MEAN, STD = 0.5024, 0.2898  # the paper's normalisation
HOSPITALS = ("molinette", "mauriziano", "sanluigi", "monzino")
#: In the offline training pool, the label each hospital mostly sends (its bias-aligned label).
OFFLINE_MAJORITY = (1, 1, 0, 0)
CHEXPERT_HOW = (
    "request CheXpert (Stanford AIMI research-use agreement) at https://stanfordmlgroup.github.io/competitions/chexpert/"
    " and unpack CheXpert-v1.0(-small) so that data_dir holds train.csv, valid.csv and the train/ and valid/ folders"
)
CORDA_HOW = (
    "CORDA is distributed by the Co.R.S.A. consortium (University of Turin, https://github.com/EIDOSLAB); put the"
    " images under data_dir/images and a CSV data_dir/corda.csv with columns image,covid,hospital,patient[,split]"
)


# ---------------------------------------------------------------------------------------------------- augmentation
def random_affine(
    image: torch.Tensor,
    rng: np.random.Generator,
    *,
    hflip_p: float = 0.0,
    shift: float = 0.0,
    scale: tuple[float, float] = (1.0, 1.0),
    rotate_deg: float = 0.0,
) -> torch.Tensor:
    """Random flip / shift / scale / rotation of ``image`` ``[1, S, S]`` (bilinear, zero padding).

    ``scale`` below 1 zooms in, i.e. a RandomResizedCrop with area ``scale ** 2`` and a fixed aspect ratio.
    """
    s = rng.uniform(*scale)
    angle = math.radians(rng.uniform(-rotate_deg, rotate_deg))
    tx, ty = rng.uniform(-shift, shift, size=2) * 2
    flip = -1.0 if rng.random() < hflip_p else 1.0
    cos, sin = math.cos(angle) * s, math.sin(angle) * s
    theta = torch.tensor([[cos * flip, -sin, tx], [sin * flip, cos, ty]], dtype=torch.float32)
    grid = F.affine_grid(theta[None], [1, *image.shape], align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


class CXRDataset(Dataset):
    """Images from ``load(i)`` (``[1, S, S]`` in [0, 1]) with targets, optional groups and seeded augmentation.

    Augmentation draws from a generator seeded by ``(seed, epoch, index)``, where the epoch is read from the
    loader's :class:`reprokit.data.SeededRandomSampler` (attach it with :meth:`follow`), so a resumed run sees the
    same augmented images as an uninterrupted one.

    Args:
        load: Index -> image ``[1, S, S]``.
        targets: ``[N]`` or ``[N, L]``.
        groups: ``[N]`` group (hospital) ids, or None (step 1).
        augment: Keyword arguments of :func:`random_affine`, or None for no augmentation.
        seed: Augmentation seed.
    """

    def __init__(
        self,
        load: Callable[[int], torch.Tensor],
        targets: torch.Tensor,
        groups: torch.Tensor | None = None,
        augment: dict | None = None,
        seed: int = 0,
    ):
        self.load, self.targets, self.groups, self.augment, self.seed = load, targets, groups, augment, seed
        self._sampler = None

    def follow(self, sampler) -> None:
        """Read the epoch from ``sampler`` (one with an ``epoch`` attribute)."""
        self._sampler = sampler

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.load(index)
        if self.augment:
            epoch = getattr(self._sampler, "epoch", 0)
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, index]))
            image = random_affine(image, rng, **self.augment)
        image = (image - MEAN) / STD
        if self.groups is None:
            return image, self.targets[index]
        return image, self.targets[index], self.groups[index]


def _loader(dataset: CXRDataset, batch_size: int, shuffle: bool, seed: int, num_workers: int, drop_last=False):
    loader = make_loader(dataset, batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers, drop_last=drop_last)
    dataset.follow(loader.sampler)
    return loader


def read_image(path: Path, resize: int, crop: int) -> torch.Tensor:
    """A grayscale image file resized to ``resize`` squared and centre-cropped to ``crop``: ``[1, crop, crop]``."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("L").resize((resize, resize), Image.BILINEAR), dtype=np.float32) / 255.0
    off = (resize - crop) // 2
    return torch.from_numpy(arr[off : off + crop, off : off + crop].copy())[None]


# ------------------------------------------------------------------------------------------- offline generation
@functools.lru_cache(maxsize=8)
def offline_findings(n: int, seed: int, size: int, prevalence: float, uncertain_rate: float):
    """Step-1 offline set: images ``[n, 1, S, S]`` and CheXpert-coded targets ``[n, L]`` (1, 0 or -1 = uncertain).

    Styles vary at random (any hospital or neutral) so that step 1 learns anatomy under every acquisition style.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    styles = list(cxr.HOSPITALS.values())
    style_index = rng.integers(-1, len(styles), n)
    batch = cxr.generate(
        n,
        seed=seed,
        size=size,
        prevalence=dict.fromkeys(cxr.FINDINGS, prevalence),
        covid=rng.random(n) < 0.15,
        styles=styles,
        style_index=style_index,
    )
    targets = offline_targets(batch.findings)
    # Radiology reports hedge: a share of the labels is "uncertain" (-1), as in CheXpert's labeller output.
    uncertain = torch.from_numpy(rng.random(targets.shape) < uncertain_rate)
    return batch.images, torch.where(uncertain, torch.full_like(targets, -1.0), targets)


@functools.lru_cache(maxsize=8)
def offline_covid(n: int, seed: int, size: int, covid_rate: float, bias_strength: float, test: bool):
    """Step-2 offline set: images, COVID labels, hospital ids and patient ids.

    In the pool (``test=False``) a case goes, with probability ``bias_strength``, to one of the two hospitals whose
    majority label (``OFFLINE_MAJORITY``) is its own label; in the test set the hospital is uniform and independent of
    the label. Pool and test use disjoint lung shapes (patients).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2, int(test)]))
    covid = rng.random(n) < covid_rate
    majority = np.asarray(OFFLINE_MAJORITY)
    if test:
        hospital = rng.integers(0, len(HOSPITALS), n)
    else:
        aligned = rng.random(n) < bias_strength
        pick = rng.integers(0, 2, n)
        same = np.stack([np.flatnonzero(majority == 0), np.flatnonzero(majority == 1)])  # [label, 2]
        other = same[::-1]
        hospital = np.where(aligned, same[covid.astype(int), pick], other[covid.astype(int), pick])
    n_masks = len(cxr.lung_masks(size))
    allowed = np.array([m for m in range(n_masks) if (m % 5 == 0) == test])
    patients = allowed[rng.integers(0, len(allowed), n)]
    batch = cxr.generate(
        n,
        seed=seed + (7_000_003 if test else 0),
        size=size,
        prevalence=dict.fromkeys(cxr.FINDINGS, 0.1),
        covid=covid,
        styles=[cxr.HOSPITALS[h] for h in HOSPITALS],
        style_index=hospital,
        patients=patients,
    )
    return batch.images, torch.from_numpy(covid.astype(np.int64)), torch.from_numpy(hospital), batch.patient


# ------------------------------------------------------------------------------------------------ step 1: findings
class FindingsDataModule(pl.LightningDataModule):
    """Step 1: multi-label findings (CheXpert, or the offline analogue).

    Args:
        source: ``"offline"`` (reprokit.cxr analogue) or ``"real"`` (CheXpert from ``data_dir``).
        data_dir: CheXpert root (``source="real"``).
        img_size: Input side (224 or 448 in the paper).
        resize_to: Side before the centre crop (250 or 500 in the paper; real data only).
        n_train: Offline training images.
        n_val: Offline validation images.
        n_test: Offline test images.
        prevalence: Offline probability of each finding.
        uncertain_rate: Offline share of training labels marked uncertain (-1).
        augment: Keyword arguments of :func:`random_affine` for training images (HorizontalFlip + ShiftScaleRotate).
        batch_size: Batch size.
        seed: Seed of the offline data, the split and the shuffle.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        source: Literal["offline", "real"] = "offline",
        data_dir: str | None = None,
        img_size: int = 64,
        resize_to: int = 250,
        n_train: int = 2000,
        n_val: int = 300,
        n_test: int = 500,
        prevalence: float = 0.2,
        uncertain_rate: float = 0.1,
        augment: dict | None = None,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.labels = CHEXPERT_LABELS if source == "real" else None

    def _root(self) -> Path:
        return require_dataset(self.hparams.data_dir, "CheXpert", CHEXPERT_HOW, ["train.csv", "valid.csv"])

    def prepare_data(self) -> None:
        if self.hparams.source == "real":
            self._root()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if hp.source == "offline":
            n = hp.n_train + hp.n_val + hp.n_test
            images, targets = offline_findings(n, hp.seed, hp.img_size, hp.prevalence, hp.uncertain_rate)
            cut = [hp.n_train, hp.n_train + hp.n_val]
            parts = [slice(0, cut[0]), slice(cut[0], cut[1]), slice(cut[1], n)]
            # Uncertain labels only in training: validation and test report against the exact findings.
            exact = targets.clamp(min=0)
            sets = []
            for k, sl in enumerate(parts):
                imgs, tg = images[sl], (targets if k == 0 else exact)[sl]
                sets.append(CXRDataset(imgs.__getitem__, tg, augment=hp.augment if k == 0 else None, seed=hp.seed))
            self.train_set, self.val_set, self.test_set = sets
            return
        self._setup_real()

    def _setup_real(self) -> None:
        import pandas as pd

        hp, root = self.hparams, self._root()

        def table(name: str):
            df = pd.read_csv(root / name)
            df = df[df["Frontal/Lateral"] == "Frontal"] if "Frontal/Lateral" in df else df
            paths = [root / Path(p).relative_to(Path(p).parts[0]) for p in df["Path"]]
            return paths, torch.tensor(df[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float32)), df

        paths, targets, df = table("train.csv")
        patient = df["Path"].str.extract(r"(patient\d+)")[0].to_numpy()
        any_pos = (targets == 1).any(1).long().numpy()
        train_idx, val_idx = patient_folds(any_pos, patient, 10, hp.seed)[0]
        load = functools.partial(self._load, paths)
        self.train_set = CXRDataset(lambda i: load(int(train_idx[i])), targets[train_idx], augment=hp.augment)
        self.val_set = CXRDataset(lambda i: load(int(val_idx[i])), targets[val_idx])
        test_paths, test_targets, _ = table("valid.csv")
        self.test_set = CXRDataset(functools.partial(self._load, test_paths), test_targets)

    def _load(self, paths: list[Path], index: int) -> torch.Tensor:
        return read_image(paths[index], self.hparams.resize_to, self.hparams.img_size)

    def train_dataloader(self):
        hp = self.hparams
        return _loader(self.train_set, hp.batch_size, True, hp.seed, hp.num_workers)

    def val_dataloader(self):
        return _loader(self.val_set, 256, False, 0, self.hparams.num_workers)

    def test_dataloader(self):
        return _loader(self.test_set, 256, False, 0, self.hparams.num_workers)


# --------------------------------------------------------------------------------------------- step 2: COVID / CORDA
class CovidDataModule(pl.LightningDataModule):
    """Step 2: binary COVID with the hospital as bias attribute (CORDA, or the offline analogue), k-fold CV.

    Args:
        source: ``"offline"`` (reprokit.cxr analogue) or ``"real"`` (CORDA from ``data_dir``).
        data_dir: CORDA root (``source="real"``).
        img_size: Input side.
        resize_to: Side before the centre crop (real data only).
        n_pool: Offline images in the cross-validation pool.
        n_test: Offline test images (hospital independent of the label).
        covid_rate: Offline share of COVID-positive cases.
        bias_strength: Offline probability that a pool case comes from a hospital whose majority label is its label.
        fold: Which fold is the validation fold.
        num_folds: Number of patient-level stratified folds (4 in the paper).
        augment: Keyword arguments of :func:`random_affine` for training images (RandomResizedCrop, rotation).
        batch_size: Batch size.
        seed: Seed of the offline data and the folds.
        shuffle_seed: Seed of the training order.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        source: Literal["offline", "real"] = "offline",
        data_dir: str | None = None,
        img_size: int = 64,
        resize_to: int = 250,
        n_pool: int = 1200,
        n_test: int = 800,
        covid_rate: float = 0.45,
        bias_strength: float = 0.9,
        fold: int = 0,
        num_folds: int = 4,
        augment: dict | None = None,
        batch_size: int = 64,
        seed: int = 0,
        shuffle_seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if not 0 <= fold < num_folds:
            raise ValueError(f"fold must be in [0, {num_folds}), got {fold}")
        self.group_names = HOSPITALS
        self.majority_label: tuple[int, ...] | None = OFFLINE_MAJORITY if source == "offline" else None

    def _root(self) -> Path:
        return require_dataset(self.hparams.data_dir, "CORDA", CORDA_HOW, ["corda.csv", "images"])

    def prepare_data(self) -> None:
        if self.hparams.source == "real":
            self._root()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if hp.source == "offline":
            pool = offline_covid(hp.n_pool, hp.seed, hp.img_size, hp.covid_rate, hp.bias_strength, False)
            test = offline_covid(hp.n_test, hp.seed, hp.img_size, hp.covid_rate, hp.bias_strength, True)
            load_pool, load_test = pool[0].__getitem__, test[0].__getitem__
            (_, y, g, patient), (_, ty, tg, _) = pool, test
        else:
            load_pool, y, g, patient, load_test, ty, tg = self._read_corda()
        train_idx, val_idx = patient_folds(y, patient, hp.num_folds, hp.seed)[hp.fold]
        self.train_set = CXRDataset(
            lambda i: load_pool(int(train_idx[i])), y[train_idx], g[train_idx], hp.augment, hp.seed
        )
        self.val_set = CXRDataset(lambda i: load_pool(int(val_idx[i])), y[val_idx], g[val_idx])
        self.test_set = CXRDataset(load_test, ty, tg)
        if self.majority_label is None:  # real data: each hospital's majority label in its training fold
            self.majority_label = tuple(
                int(y[train_idx][g[train_idx] == h].float().mean() >= 0.5) for h in range(len(HOSPITALS))
            )
        counts = torch.bincount(y[train_idx], minlength=2).float()
        self.class_frequency = (counts / counts.sum()).tolist()

    def _read_corda(self):
        import pandas as pd

        root = self._root()
        df = pd.read_csv(root / "corda.csv")
        unknown = sorted(set(df["hospital"]) - set(HOSPITALS))
        if unknown:
            raise ValueError(f"corda.csv names unknown hospitals {unknown}; expected {HOSPITALS}")
        if "split" not in df:
            is_test = df["patient"].astype(str).map(lambda p: zlib.crc32(p.encode()) % 5 == 0)
            df["split"] = np.where(is_test, "test", "train")
        parts = []
        for split in ("train", "test"):
            d = df[df["split"] == split].reset_index(drop=True)
            paths = [root / "images" / p for p in d["image"]]
            parts.append(
                (
                    functools.partial(self._load, paths),
                    torch.tensor(d["covid"].to_numpy(dtype=np.int64)),
                    torch.tensor([HOSPITALS.index(h) for h in d["hospital"]]),
                    torch.tensor(pd.factorize(d["patient"])[0]),
                )
            )
        (load, y, g, patient), (load_test, ty, tg, _) = parts
        return load, y, g, patient, load_test, ty, tg

    def _load(self, paths: list[Path], index: int) -> torch.Tensor:
        return read_image(paths[index], self.hparams.resize_to, self.hparams.img_size)

    def train_dataloader(self):
        hp = self.hparams
        # Drop the last partial batch: FairKL's statistics need a few pairs of each kind.
        return _loader(self.train_set, hp.batch_size, True, hp.shuffle_seed, hp.num_workers, drop_last=True)

    def val_dataloader(self):
        return _loader(self.val_set, 256, False, 0, self.hparams.num_workers)

    def test_dataloader(self):
        return _loader(self.test_set, 256, False, 0, self.hparams.num_workers)
