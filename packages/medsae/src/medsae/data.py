"""Data: CheXpert (the paper's) or the offline CXR-like images of ``reprokit.cxr``, as images or as embeddings.

``CXRImageDataModule`` serves images with binary labels (to train the offline encoder). ``EmbeddingDataModule``
serves the SAE's input: it encodes the images once into an :class:`~medsae.encoder.ActivationStore` on disk
(``prepare_data``), then streams normalised embeddings from it. After the loader both sources are the same code.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from reprokit.cli import runs_root
from reprokit.cxr import CHEXPERT_LABELS
from reprokit.data import DatasetNotFoundError, make_loader, require_dataset, split_indices
from torch.utils.data import Dataset

from medsae.encoder import (
    MEDCLIP_MEAN,
    MEDCLIP_STD,
    ActivationStore,
    EmbeddingDataset,
    HFImageEncoder,
    MedCLIPVisionEncoder,
    SmallCXREncoder,
    collate_batch,
    load_medclip_weights,
    normalisation_stats,
)

CHEXPERT_HOW = (
    "request CheXpert-v1.0 (or CheXpert-v1.0-small) at https://stanfordmlgroup.github.io/competitions/chexpert/ "
    "(Stanford AIMI licence), unzip it and point data_dir at the folder holding train.csv and train/"
)
CHEXPERT_LAYOUT = ("train.csv", "train")
MEDCLIP_HOW = (
    "MedCLIP-RN50's weights are the pytorch_model.bin in the zip that the `medclip` package (pip install medclip) "
    "downloads in MedCLIPModel.from_pretrained(); copy that file here, or set encoder_ckpt: medclip-package to load "
    "it through the package"
)


def require_medclip_weights(path: str | os.PathLike | None) -> Path:
    """``path`` if it is a file, else a one-line :class:`~reprokit.data.DatasetNotFoundError` saying how to get it."""
    if path is None or not Path(path).is_file():
        raise DatasetNotFoundError("MedCLIP-RN50 weights", path or "<unset>", MEDCLIP_HOW)
    return Path(path)


def require_paper_inputs(data_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Check the paper-scale inputs under ``data_dir`` before any work starts.

    Returns:
        ``(DIR/CheXpert-v1.0-small, DIR/medclip/pytorch_model.bin)``.

    Raises:
        DatasetNotFoundError: One of them is missing (the message names it, its layout and where to get it).
    """
    data_dir = Path(data_dir)
    root = require_dataset(data_dir / "CheXpert-v1.0-small", "CheXpert", CHEXPERT_HOW, CHEXPERT_LAYOUT)
    return root, require_medclip_weights(data_dir / "medclip" / "pytorch_model.bin")


def offline_label_names() -> tuple[str, ...]:
    """Labels of the offline images: ``reprokit.cxr.FINDINGS`` and the COVID-like pattern (8, as in the paper)."""
    from reprokit.cxr import FINDINGS

    return (*FINDINGS, "covid_pattern")


def offline_images(n: int, size: int, seed: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Offline chest-X-ray-like images ``[n, 1, S, S]`` and exact labels ``[n, 8]`` (image i depends on (seed, i))."""
    from reprokit import cxr

    # The COVID-like pattern is drawn per image from its own seeded stream, like the findings.
    covid = [np.random.default_rng([seed, start + i, 8]).random() < 0.2 for i in range(n)]
    batch = cxr.generate(n, seed=seed, size=size, start=start, covid=covid)
    labels = torch.cat([batch.findings, batch.covid[:, None]], dim=1).float()
    return batch.images, labels


# ----------------------------------------------------------------------------------------------------- CheXpert
def read_chexpert_csv(
    root: Path, split: str = "train", uncertain: Literal["ones", "zeros"] = "zeros", frontal_only: bool = True
) -> tuple[list[Path], torch.Tensor]:
    """Image paths and the 14 binary labels ``[N, 14]`` of CheXpert's ``<split>.csv``.

    Blank labels count as negative; uncertain (-1) ones follow ``uncertain`` (U-Ones / U-Zeros). CSV paths start
    with the dataset's folder name (``CheXpert-v1.0-small/train/...``) and are resolved against ``root``.
    """
    paths, rows = [], []
    with open(root / f"{split}.csv", newline="") as handle:
        for rec in csv.DictReader(handle):
            if frontal_only and rec.get("Frontal/Lateral", "Frontal") != "Frontal":
                continue
            rel = Path(rec["Path"])
            paths.append(root / Path(*rel.parts[1:]) if rel.parts and rel.parts[0] == root.name else root / rel)
            values = []
            for name in CHEXPERT_LABELS:
                v = rec.get(name, "") or "0"
                v = float(v)
                values.append(1.0 if v == 1 or (v == -1 and uncertain == "ones") else 0.0)
            rows.append(values)
    return paths, torch.tensor(rows)


class CheXpertImages(Dataset):
    """CheXpert images resized to ``size`` and standardised with MedCLIP's constants, with their labels.

    Args:
        paths: Image files.
        labels: ``[N, C]`` labels.
        size: Output side in pixels.
    """

    def __init__(self, paths: Sequence[Path], labels: torch.Tensor, size: int = 224):
        self.paths, self.labels, self.size = list(paths), labels, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            grey = np.asarray(img.convert("L").resize((self.size, self.size), Image.BICUBIC), dtype=np.float32)
        x = (torch.from_numpy(grey / 255.0)[None] - MEDCLIP_MEAN) / MEDCLIP_STD
        return x, self.labels[i]


class OfflineImages(Dataset):
    """Offline CXR-like images, rendered once and held in memory (``[N, 1, S, S]``) with labels ``[N, 8]``."""

    def __init__(self, n: int, size: int, seed: int):
        self.images, self.labels = offline_images(n, size, seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.images[i] - 0.5) / 0.25, self.labels[i]


# ---------------------------------------------------------------------------------------------- image datamodule
class CXRImageDataModule(pl.LightningDataModule):
    """Chest X-rays with binary findings, for training the image encoder.

    Args:
        source: ``"offline"`` (``reprokit.cxr`` images, the CPU-scale analogue) or ``"chexpert"``.
        data_dir: CheXpert folder (with ``train.csv`` and ``train/``) when ``source="chexpert"``.
        n_images: Offline images to render.
        image_size: Image side in pixels.
        data_seed: Seed of the offline images (image i depends on (data_seed, i) only).
        uncertain: CheXpert uncertain-label policy.
        batch_size: Batch size.
        split_seed: Seed of the train/val/test split.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        source: Literal["offline", "chexpert"] = "offline",
        data_dir: str | None = None,
        n_images: int = 2000,
        image_size: int = 64,
        data_seed: int = 0,
        uncertain: Literal["ones", "zeros"] = "zeros",
        batch_size: int = 64,
        split_seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()

    def prepare_data(self) -> None:
        if self.hparams.source == "chexpert":
            require_dataset(self.hparams.data_dir, "CheXpert", CHEXPERT_HOW, CHEXPERT_LAYOUT)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if hp.source == "chexpert":
            root = require_dataset(hp.data_dir, "CheXpert", CHEXPERT_HOW, CHEXPERT_LAYOUT)
            full = CheXpertImages(*read_chexpert_csv(root, uncertain=hp.uncertain), size=hp.image_size)
        else:
            full = OfflineImages(hp.n_images, hp.image_size, hp.data_seed)
        parts = split_indices(len(full), (0.8, 0.1, 0.1), hp.split_seed)
        self.train_set, self.val_set, self.test_set = (torch.utils.data.Subset(full, p.tolist()) for p in parts)

    def train_dataloader(self):
        hp = self.hparams
        return make_loader(self.train_set, hp.batch_size, shuffle=True, seed=hp.split_seed, num_workers=hp.num_workers)

    def val_dataloader(self):
        return make_loader(self.val_set, 256, shuffle=False, num_workers=self.hparams.num_workers)

    def test_dataloader(self):
        return make_loader(self.test_set, 256, shuffle=False, num_workers=self.hparams.num_workers)


# ------------------------------------------------------------------------------------------ embedding datamodule
def build_encoder(kind: str, ckpt: str | None, embed_dim: int, seed: int) -> torch.nn.Module:
    """The image encoder whose embeddings the SAE reads.

    ``"medclip"``: MedCLIP-RN50, ``ckpt`` = its weights file or ``"medclip-package"``. ``"hf"``: a transformers
    CLIP-style model, ``ckpt`` = its hub id or folder (e.g. an OpenAI CLIP). ``"small"``: the offline CNN, ``ckpt`` = an
    ``EncoderModule`` checkpoint, or None for a seeded random initialisation.
    """
    if kind == "medclip":
        if ckpt == "medclip-package":
            from medsae.encoder import medclip_from_package

            return medclip_from_package().eval()
        if ckpt is None:
            raise ValueError("encoder 'medclip' needs encoder_ckpt: MedCLIP's pytorch_model.bin or 'medclip-package'")
        return load_medclip_weights(MedCLIPVisionEncoder(embed_dim), ckpt).eval()
    if kind == "hf":
        if ckpt is None:
            raise ValueError("encoder 'hf' needs encoder_ckpt: a transformers CLIP-style model id or folder")
        return HFImageEncoder(ckpt).eval()
    if kind != "small":
        raise ValueError(f"unknown encoder {kind!r}; choose 'medclip', 'hf' or 'small'")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        enc = SmallCXREncoder(embed_dim)
    if ckpt is not None:
        if not Path(ckpt).is_file():
            raise FileNotFoundError(f"encoder checkpoint '{ckpt}' does not exist")
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        enc.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")})
    return enc.eval()


class EmbeddingDataModule(pl.LightningDataModule):
    """Normalised image embeddings (``E|x|^2 = d``) from an on-disk activation store, with the images' labels.

    The store is built once by ``prepare_data`` (encode every image; chunked writes) and reused by every run with
    the same settings. Batches are dicts ``{"x": [B, d], "y": [B, C], "index": [B]}``.

    Args:
        source: ``"offline"`` (``reprokit.cxr`` images) or ``"chexpert"`` (real CheXpert images).
        data_dir: CheXpert folder (``source="chexpert"``).
        encoder: ``"small"`` (offline CNN), ``"medclip"`` (MedCLIP-RN50) or ``"hf"`` (a transformers CLIP-style model).
        encoder_ckpt: Encoder weights (see :func:`build_encoder`); None with ``"small"``: seeded random init.
        embed_dim: Embedding width ``d`` (512 for MedCLIP).
        n_images: Offline images (``source="offline"``).
        image_size: Image side given to the encoder.
        data_seed: Seed of the offline images and of a random-init encoder.
        uncertain: CheXpert uncertain-label policy.
        store_dir: Activation-store folder (default: ``runs/medsae/activations/<hash of these settings>``).
        batch_size: SAE batch size.
        encode_batch_size: Images per encoder forward pass when building the store.
        split_seed: Seed of the train/val/test split (80/10/10).
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        source: Literal["offline", "chexpert"] = "offline",
        data_dir: str | None = None,
        encoder: Literal["small", "medclip", "hf"] = "small",
        encoder_ckpt: str | None = None,
        embed_dim: int = 64,
        n_images: int = 2000,
        image_size: int = 64,
        data_seed: int = 0,
        uncertain: Literal["ones", "zeros"] = "zeros",
        store_dir: str | None = None,
        batch_size: int = 256,
        encode_batch_size: int = 256,
        split_seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()

    # ------------------------------------------------------------------------------------------------- store
    def _chexpert_root(self) -> Path:
        return require_dataset(self.hparams.data_dir, "CheXpert", CHEXPERT_HOW, CHEXPERT_LAYOUT)

    def store_path(self) -> Path:
        """Where this configuration's activation store lives."""
        hp = self.hparams
        if hp.store_dir:
            return Path(hp.store_dir)
        ckpt = hp.encoder_ckpt
        ckpt_id = None
        if ckpt and Path(ckpt).is_file():
            stat = Path(ckpt).stat()
            ckpt_id = [os.path.abspath(ckpt), stat.st_size, stat.st_mtime_ns]
        keys = ["source", "data_dir", "encoder", "embed_dim", "n_images", "image_size", "data_seed", "uncertain"]
        spec = {k: hp[k] for k in keys} | {"encoder_ckpt": ckpt_id or ckpt}
        digest = hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return runs_root() / "medsae" / "activations" / f"{hp.source}-{hp.encoder}-{digest}"

    def _image_chunks(self) -> tuple[int, Sequence[str], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        hp = self.hparams
        if hp.source == "chexpert":
            images = CheXpertImages(*read_chexpert_csv(self._chexpert_root(), uncertain=hp.uncertain), hp.image_size)
            loader = torch.utils.data.DataLoader(images, hp.encode_batch_size, num_workers=hp.num_workers)
            return len(images), CHEXPERT_LABELS, iter(loader)
        names = offline_label_names()

        def chunks():
            for start in range(0, hp.n_images, hp.encode_batch_size):
                n = min(hp.encode_batch_size, hp.n_images - start)
                imgs, labels = offline_images(n, hp.image_size, hp.data_seed, start)
                yield (imgs - 0.5) / 0.25, labels

        return hp.n_images, names, chunks()

    @torch.no_grad()
    def build_store(self) -> ActivationStore:
        """Encode every image into the activation store unless a complete one exists."""
        hp = self.hparams
        store = ActivationStore(self.store_path())
        if store.complete:
            return store
        enc = build_encoder(hp.encoder, hp.encoder_ckpt, hp.embed_dim, hp.data_seed)
        n, names, chunks = self._image_chunks()
        encoded = ((enc(imgs), labels) for imgs, labels in chunks)
        meta = {"labels": list(names), "source": hp.source, "encoder": hp.encoder, "encoder_ckpt": hp.encoder_ckpt}
        return store.write(encoded, n, hp.embed_dim, len(names), meta)

    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.source == "chexpert":
            self._chexpert_root()
        if (
            hp.encoder == "medclip"
            and hp.encoder_ckpt != "medclip-package"
            and not ActivationStore(self.store_path()).complete
        ):
            require_medclip_weights(hp.encoder_ckpt)
        self.build_store()

    def setup(self, stage: str | None = None) -> None:
        if self.hparams.source == "chexpert":
            self._chexpert_root()
        store = ActivationStore(self.store_path())
        if not store.complete:  # setup without prepare_data (e.g. called directly)
            store = self.build_store()
        self.store = store
        self.label_names = tuple(store.meta()["labels"])
        n = store.meta()["n"]
        self.split = dict(zip(("train", "val", "test"), split_indices(n, (0.8, 0.1, 0.1), self.hparams.split_seed)))
        self.mean, self.scale = _chunked_stats(store, self.split["train"])
        self.train_set, self.val_set, self.test_set = (
            EmbeddingDataset(store, self.split[s], self.mean, self.scale) for s in ("train", "val", "test")
        )

    def split_tensors(self, split: str) -> dict[str, torch.Tensor]:
        """A whole split in memory: ``x`` (normalised) ``[n, d]``, ``e`` (raw) ``[n, d]``, ``y`` ``[n, C]``."""
        rows = self.split[split].numpy()
        e = torch.from_numpy(np.ascontiguousarray(self.store.embeddings()[rows]))
        y = torch.from_numpy(np.ascontiguousarray(self.store.labels()[rows])).float()
        return {"x": (e - self.mean) * self.scale, "e": e, "y": y, "index": self.split[split]}

    def _loader(self, dataset, batch_size: int, shuffle: bool):
        hp = self.hparams
        workers = hp.num_workers
        return make_loader(
            dataset, batch_size, shuffle=shuffle, seed=hp.split_seed, num_workers=workers, collate_fn=collate_batch
        )

    def train_dataloader(self):
        return self._loader(self.train_set, self.hparams.batch_size, True)

    def val_dataloader(self):
        return self._loader(self.val_set, 4096, False)

    def test_dataloader(self):
        return self._loader(self.test_set, 4096, False)


def _chunked_stats(store: ActivationStore, rows: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, float]:
    """:func:`~medsae.encoder.normalisation_stats` over ``rows`` of a store, reading it in chunks."""
    emb = store.embeddings()
    rows = rows.sort().values.numpy()
    if len(rows) <= chunk:
        return normalisation_stats(torch.from_numpy(np.ascontiguousarray(emb[rows])))
    d = emb.shape[1]
    s1, s2, n = torch.zeros(d, dtype=torch.float64), torch.zeros((), dtype=torch.float64), 0
    for i in range(0, len(rows), chunk):
        x = torch.from_numpy(np.ascontiguousarray(emb[rows[i : i + chunk]])).double()
        s1 += x.sum(0)
        s2 += x.pow(2).sum()
        n += len(x)
    mean = s1 / n
    var = s2 / n - mean.pow(2).sum()
    return mean.float(), float((d / var).sqrt())
