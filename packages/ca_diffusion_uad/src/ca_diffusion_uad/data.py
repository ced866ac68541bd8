"""Brain MRI data: preprocessed NIfTI volumes, the offline MNI152 phantom population, NOVA box-annotated images.

The first two paths end in the same tensors: volumes ``[V, Z, 1, H, W]`` in [0, 1] with brain masks and lesion
masks. Healthy training volumes are cut into slices; evaluation runs on whole volumes (one volume per batch) so the
3D median filter and per-volume scores apply. NOVA (evaluation only) gives single 2D images with gold bounding boxes
and no pixel masks; it is scored by box detection only (:class:`NovaDataModule`).
"""

from __future__ import annotations

import ast
import csv
import functools
import math
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from reprokit.data import make_loader, require_dataset
from torch.nn import functional as F
from torch.utils.data import Dataset

HOW_TO_GET = {
    "IXI": "register at https://brain-development.org/ixi-dataset/ (CC BY-SA 3.0), download the T2 images",
    "BraTS21": "register for the RSNA-ASNR-MICCAI BraTS 2021 challenge (Synapse) and download the training data",
    "MSLUB": "request the MS lesion data of the University Hospital of Ljubljana (lit.fe.uni-lj.si/tools)",
    "NOVA": (
        "download the evaluation-only NOVA benchmark from Hugging Face (datasets Ano-2090/Nova or c-i-ber/Nova, "
        "CC BY-NC-SA 4.0, non-commercial): its PNG slices into images/ and its metadata table (columns filename, "
        "caption, bbox_gold) as NOVA_metadata.csv"
    ),
}
PREPROCESSING = (
    "preprocess each T2 volume as the paper: 1 mm resampling, skull stripping, SRI24 atlas registration, cropping, "
    "N4 bias correction; save <id>_t2.nii.gz, <id>_mask.nii.gz (brain) and, for lesions, <id>_seg.nii.gz"
)
SPLITS = ("train", "val", "test", "healthy_test")


# ------------------------------------------------------------------------------------------------ shared tensors
def to_slices(volume: torch.Tensor, size: int, z_range: tuple[int, int, int], mode: str = "bilinear") -> torch.Tensor:
    """Axial slices ``[Z, 1, size, size]`` of a volume ``[X, Y, Zfull]`` (zero-padded to square, then resized)."""
    z0, z1, step = z_range
    sl = volume[:, :, z0:z1:step].permute(2, 1, 0).float()  # [Z, Y(rows, anterior-posterior), X]
    h, w = sl.shape[-2:]
    side = max(h, w)
    sl = F.pad(sl, ((side - w) // 2, side - w - (side - w) // 2, (side - h) // 2, side - h - (side - h) // 2))
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(sl.unsqueeze(1), size=(size, size), mode=mode, **kwargs).flip(-2)


def normalise(volume: torch.Tensor, brain: torch.Tensor, q: float = 0.995) -> torch.Tensor:
    """Scale intensities to [0, 1] by the brain's ``q`` quantile and zero the background (skull-stripped)."""
    inside = volume[brain > 0.5]
    top = torch.quantile(inside.float()[:: max(1, inside.numel() // 100_000)], q) if inside.numel() else 1.0
    return (volume / top).clamp(0, 1) * (brain > 0.5)


# ------------------------------------------------------------------------------------------------ offline phantom
@functools.lru_cache(maxsize=4)
def mni152(size: int, z_range: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The MNI152 2 mm template bundled with nilearn as slices ``[Z, 1, size, size]`` and its brain mask.

    Cached per process (a reproduce run builds many data modules); callers must not modify the tensors.
    """
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    image = torch.from_numpy(load_mni152_template(resolution=2).get_fdata()).float()
    brain = torch.from_numpy(load_mni152_brain_mask(resolution=2).get_fdata()).float()
    slices = to_slices(image, size, z_range)
    mask = (to_slices(brain, size, z_range) > 0.5).float()
    return normalise(slices, mask), mask


def _smooth_field(gen: torch.Generator, n: int, channels: int, size: int, cells: int) -> torch.Tensor:
    """A smooth random field ``[n, channels, size, size]`` in about [-1, 1] (bicubic upsampling of a coarse grid)."""
    coarse = torch.rand(n, channels, cells, cells, generator=gen) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)


def augment_subject(
    image: torch.Tensor, brain: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One synthetic healthy subject: the template warped and re-contrasted, identically on every slice.

    Affine (rotation ±10°, scale 0.9-1.1, shift ±4 %, left-right flip) plus a smooth elastic displacement, then a
    gamma curve, a multiplicative bias field and Rician-like noise inside the brain.

    Args:
        image: Template slices ``[Z, 1, H, W]``.
        brain: Brain mask, same shape.
        gen: Generator; the subject is a function of its state.

    Returns:
        The subject's slices and brain mask, same shape.
    """
    z, _, h, w = image.shape
    u = torch.rand(8, generator=gen)
    angle = (u[0] * 2 - 1) * math.radians(10)
    scale = 0.9 + 0.2 * u[1]
    flip = -1.0 if u[2] < 0.5 else 1.0
    shift = (u[3:5] * 2 - 1) * 0.08
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor([[flip * cos, -sin, float(shift[0])], [flip * sin, cos, float(shift[1])]])
    grid = F.affine_grid(theta.expand(z, 2, 3), [z, 1, h, w], align_corners=False)
    grid = grid + 0.04 * _smooth_field(gen, 1, 2, h, 5).permute(0, 2, 3, 1)
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = (F.grid_sample(brain, grid, mode="bilinear", align_corners=False) > 0.5).float()
    gamma = 0.75 + 0.6 * float(u[5])
    bias = torch.exp(0.15 * _smooth_field(gen, 1, 1, h, 3))
    contrast = 0.9 + 0.2 * float(u[6])
    noise = torch.randn(warped.shape, generator=gen) * (0.01 + 0.02 * float(u[7]))
    out = (warped.clamp(0, 1) ** gamma * bias * contrast + noise).clamp(0, 1) * mask
    return out, mask


def add_lesions(
    image: torch.Tensor, brain: torch.Tensor, gen: torch.Generator, max_lesions: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plant 1..``max_lesions`` soft-bordered ellipsoids whose intensity stays inside the healthy range.

    Each lesion's intensity is its surrounding tissue's mean shifted by 0.25-0.45 towards whichever side stays
    inside the brain's 5-95 % intensity range, so a plain intensity threshold cannot find it: detecting it needs a
    model of what anatomy belongs there.

    Args:
        image: Subject slices ``[Z, 1, H, W]``.
        brain: Brain mask, same shape.
        gen: Generator.
        max_lesions: Upper bound on the number of lesions.

    Returns:
        The image with lesions and the exact lesion mask (``[Z, 1, H, W]``, 1 where the lesion weight exceeds 0.5).
    """
    z, _, h, w = image.shape
    out, lesion = image.clone(), torch.zeros_like(image)
    lo, hi = torch.quantile(image[brain > 0.5], torch.tensor([0.05, 0.95])).tolist()
    zz, yy, xx = torch.meshgrid(
        torch.arange(z).float(), torch.arange(h).float(), torch.arange(w).float(), indexing="ij"
    )
    eroded = -F.max_pool2d(-brain, 7, 1, 3)  # centres well inside the brain
    candidates = eroded[:, 0].nonzero().float()
    n = 1 + int(torch.randint(0, max_lesions, (1,), generator=gen))
    for _ in range(n):
        centre = candidates[int(torch.randint(0, len(candidates), (1,), generator=gen))]
        u = torch.rand(5, generator=gen)
        ry, rx = (0.06 + 0.1 * u[0:2]) * h
        rz = 1.5 + 2.5 * float(u[2])
        angle = float(u[3]) * math.pi
        dy, dx = yy - centre[1], xx - centre[2]
        ay, ax = math.cos(angle) * dy + math.sin(angle) * dx, -math.sin(angle) * dy + math.cos(angle) * dx
        radius = ((ay / ry) ** 2 + (ax / rx) ** 2 + ((zz - centre[0]) / rz) ** 2).sqrt()
        weight = (torch.sigmoid((1 - radius) / 0.12) * brain[:, 0]).unsqueeze(1)
        core = weight > 0.5
        if not core.any():
            continue
        local = float(out[core].mean())
        delta = 0.25 + 0.2 * float(u[4])
        target = local + delta if local + delta <= hi else max(local - delta, lo)
        out = out * (1 - weight) + target * weight
        lesion = torch.maximum(lesion, core.float())
    return out.clamp(0, 1) * brain, lesion


@functools.lru_cache(maxsize=16)
def phantom_population(
    n: int, seed: int, size: int, z_range: tuple[int, int, int], lesions: bool, max_lesions: int = 2
) -> dict[str, torch.Tensor]:
    """``n`` subjects, subject ``i`` drawn from a generator seeded by ``(seed, i)`` (independent of the global RNG).

    Cached per process; callers must not modify the tensors.

    Returns:
        ``image``, ``brain``, ``lesion``: ``[n, Z, 1, size, size]``.
    """
    template, template_brain = mni152(size, z_range)
    images, brains, masks = [], [], []
    for i in range(n):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        image, brain = augment_subject(template, template_brain, gen)
        mask = torch.zeros_like(image)
        if lesions:
            image, mask = add_lesions(image, brain, gen, max_lesions)
        images.append(image)
        brains.append(brain)
        masks.append(mask)
    return {"image": torch.stack(images), "brain": torch.stack(brains), "lesion": torch.stack(masks)}


# ---------------------------------------------------------------------------------------------------- real data
def read_nifti_split(folder: Path, size: int, z_range: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """Preprocessed volumes of one split: ``<id>_t2.nii.gz`` + ``<id>_mask.nii.gz`` (+ ``<id>_seg.nii.gz``)."""
    import nibabel as nib

    images, brains, masks = [], [], []
    for path in sorted(folder.glob("*_t2.nii*")):
        stem = path.name.split("_t2.nii")[0]
        suffix = path.name.split("_t2")[1]

        def load(kind: str, stem: str = stem, suffix: str = suffix) -> torch.Tensor | None:
            p = folder / f"{stem}_{kind}{suffix}"
            return torch.from_numpy(nib.load(str(p)).get_fdata()).float() if p.exists() else None

        volume = torch.from_numpy(nib.load(str(path)).get_fdata()).float()
        brain = load("mask")
        brain = (volume > 0).float() if brain is None else (brain > 0.5).float()
        seg = load("seg")
        seg = torch.zeros_like(volume) if seg is None else (seg > 0).float()
        brain_sl = (to_slices(brain, size, z_range) > 0.5).float()
        images.append(normalise(to_slices(volume, size, z_range), brain_sl))
        brains.append(brain_sl)
        masks.append((to_slices(seg, size, z_range, mode="nearest") > 0.5).float())
    if not images:
        raise FileNotFoundError(f"no *_t2.nii.gz volumes in {folder}")
    return {"image": torch.stack(images), "brain": torch.stack(brains), "lesion": torch.stack(masks)}


# ---------------------------------------------------------------------------------------------------------- NOVA
NOVA_LAYOUT = ("NOVA_metadata.csv", "images/*.png")


def parse_nova_boxes(text: str) -> torch.Tensor:
    """Boxes ``[K, 4]`` as ``(x1, y1, x2, y2)`` from NOVA's ``bbox_gold`` cell.

    The cell is a Python dict literal of parallel lists, ``{'x': [...], 'y': [...], 'width': [...], 'height': [...]}``,
    with ``(x, y)`` the top-left corner in pixels of the stored image.
    """
    d = ast.literal_eval(text) if text and text.strip() else {}
    xywh = torch.tensor(list(zip(d.get("x", []), d.get("y", []), d.get("width", []), d.get("height", []))))
    xywh = xywh.double().view(-1, 4)
    return torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)


def square_resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """``[H, W]`` -> ``[size, size]``: centred zero-padding to a square (as :func:`to_slices`), then resizing.

    Downsizing averages areas (a 480 px slice to 96 px is an exact 5x5 average); upsizing is bilinear.
    """
    h, w = image.shape
    side = max(h, w)
    sq = F.pad(image, ((side - w) // 2, side - w - (side - w) // 2, (side - h) // 2, side - h - (side - h) // 2))
    sq = sq[None, None].float()
    if side >= size:
        return F.interpolate(sq, size=(size, size), mode="area")[0, 0]
    return F.interpolate(sq, size=(size, size), mode="bilinear", align_corners=False)[0, 0]


def square_resize_boxes(boxes: torch.Tensor, height: int, width: int, size: int) -> torch.Tensor:
    """Boxes moved by the same padding and scaling as :func:`square_resize_image`.

    Args:
        boxes: ``[K, 4]`` as ``(x1, y1, x2, y2)`` in pixel-edge coordinates of the ``height x width`` image.
        height: Image rows.
        width: Image columns.
        size: Output side.

    Returns:
        ``[K, 4]`` boxes in the ``size x size`` image, clipped to it.
    """
    side = max(height, width)
    offset = torch.tensor([(side - width) // 2, (side - height) // 2] * 2, dtype=torch.float64)
    return ((boxes.double() + offset) * (size / side)).clamp(0, size).float()


def boxes_to_mask(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """``[size, size]`` mask of the pixels whose centre lies inside any box (for figures; scoring uses the boxes)."""
    centre = torch.arange(size, dtype=torch.float32) + 0.5
    inside_x = (centre[None, :] >= boxes[:, 0:1]) & (centre[None, :] < boxes[:, 2:3])  # [K, W]
    inside_y = (centre[None, :] >= boxes[:, 1:2]) & (centre[None, :] < boxes[:, 3:4])  # [K, H]
    return (inside_y[:, :, None] & inside_x[:, None, :]).any(0).float()


def read_nova(
    root: Path, size: int, caption_filter: str | None = "T2", foreground_threshold: float = 0.05
) -> list[dict[str, torch.Tensor]]:
    """NOVA images listed in ``root/NOVA_metadata.csv`` (from ``root/images/``), resized with their gold boxes.

    Args:
        root: Folder with ``NOVA_metadata.csv`` and ``images/<filename>``.
        size: Output side in pixels (the model's input size).
        caption_filter: Keep only rows whose caption contains this text (the paper's reference evaluation keeps
            captions mentioning ``"T2"``); ``None`` or ``""`` keeps every row.
        foreground_threshold: Intensity above which a pixel counts as head (the region scored; NOVA has no brain
            masks).

    Returns:
        One dict per image: ``image``, ``brain``, ``lesion`` (gold boxes rasterised) ``[1, 1, size, size]``,
        ``boxes [K, 4]`` in output pixels and ``name``.
    """
    from PIL import Image

    items = []
    with open(root / "NOVA_metadata.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if caption_filter and caption_filter not in (row.get("caption") or ""):
                continue
            path = root / "images" / row["filename"]
            if not path.is_file():
                raise FileNotFoundError(f"NOVA image {path} listed in NOVA_metadata.csv is missing")
            with Image.open(path) as im:
                raw = torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float32) / 255.0)
            h, w = raw.shape
            image = square_resize_image(raw, size).clamp(0, 1)
            boxes = square_resize_boxes(parse_nova_boxes(row.get("bbox_gold", "")), h, w, size)
            boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
            items.append(
                {
                    "image": image[None, None],
                    "brain": (image > foreground_threshold).float()[None, None],
                    "lesion": boxes_to_mask(boxes, size)[None, None],
                    "boxes": boxes,
                    "name": row["filename"],
                }
            )
    if not items:
        raise FileNotFoundError(f"no NOVA rows in {root / 'NOVA_metadata.csv'} (caption filter {caption_filter!r})")
    return items


# ------------------------------------------------------------------------------------------------------ datasets
class SliceDataset(Dataset):
    """Healthy training slices of a set of volumes ``[V, Z, 1, H, W]``; item: ``{"image", "brain"}``."""

    def __init__(self, volumes: dict[str, torch.Tensor]):
        self.image = volumes["image"].flatten(0, 1)
        self.brain = volumes["brain"].flatten(0, 1)

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.image[i], "brain": self.brain[i]}


class VolumeDataset(Dataset):
    """Whole volumes; item: ``{"image", "brain", "lesion"}`` each ``[Z, 1, H, W]``."""

    def __init__(self, volumes: dict[str, torch.Tensor]):
        self.volumes = volumes

    def __len__(self) -> int:
        return len(self.volumes["image"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.volumes.items()}


class BrainMRIDataModule(pl.LightningDataModule):
    """Healthy slices for training; anomalous validation/test volumes and healthy test volumes for evaluation.

    Validation during ``fit`` is the reconstruction loss on healthy slices. ``test`` runs three loaders in order:
    anomalous validation volumes (where the threshold is chosen), anomalous test volumes and healthy test volumes.

    Args:
        source: ``"offline"`` (MNI152 phantom population, the CPU-scale analogue) or ``"real"`` (NIfTI folders).
        data_dir: Real data root with folders ``train`` (healthy, e.g. IXI), ``val`` and ``test`` (anomalous, e.g.
            BraTS21) and ``healthy_test`` (held-out healthy), each holding ``<id>_t2.nii.gz`` and ``<id>_mask.nii.gz``
            (and ``<id>_seg.nii.gz`` for lesions).
        dataset: Name of the anomalous dataset (``BraTS21``, ``MSLUB``...), for messages.
        image_size: Slice side in pixels.
        z_range: Axial slices ``(start, stop, step)`` in voxel indices of the (2 mm offline / preprocessed) volume.
        train_subjects: Offline healthy training subjects.
        val_subjects: Offline anomalous validation subjects.
        test_subjects: Offline anomalous test subjects.
        healthy_test_subjects: Offline healthy test subjects.
        max_lesions: Offline lesions per anomalous subject (1..max).
        batch_size: Training batch size (slices).
        split_seed: Seed of the phantom population and of the shuffling order.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        source: Literal["offline", "real"] = "offline",
        data_dir: str | None = None,
        dataset: str = "BraTS21",
        image_size: int = 48,
        z_range: tuple[int, int, int] = (25, 65, 2),
        train_subjects: int = 64,
        val_subjects: int = 8,
        test_subjects: int = 16,
        healthy_test_subjects: int = 8,
        max_lesions: int = 2,
        batch_size: int = 32,
        split_seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()

    def _root(self) -> Path:
        name = f"IXI (healthy) + {self.hparams.dataset} (preprocessed T2 volumes)"
        how = f"{HOW_TO_GET['IXI']}; {HOW_TO_GET.get(self.hparams.dataset, 'see the paper')}; {PREPROCESSING}"
        return require_dataset(self.hparams.data_dir, name, how, [f"{s}/*_t2.nii*" for s in SPLITS])

    def prepare_data(self) -> None:
        # Checked before any run folder is written, so a missing dataset leaves nothing behind.
        if self.hparams.source == "real":
            self._root()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        z_range = tuple(int(v) for v in hp.z_range)
        if hp.source == "real":
            root = self._root()
            splits = {s: read_nifti_split(root / s, hp.image_size, z_range) for s in SPLITS}
        else:
            # Seeds of the four offline splits differ so no subject appears twice.
            counts = {
                "train": (hp.train_subjects, False),
                "val": (hp.val_subjects, True),
                "test": (hp.test_subjects, True),
                "healthy_test": (hp.healthy_test_subjects, False),
            }
            splits = {
                s: phantom_population(n, hp.split_seed * 10 + k, hp.image_size, z_range, lesions, hp.max_lesions)
                for k, (s, (n, lesions)) in enumerate(counts.items())
            }
        n_train = len(splits["train"]["image"])
        n_fit_val = max(1, n_train // 8)  # held-out healthy subjects for the validation loss
        self.train_set = SliceDataset({k: v[n_fit_val:] for k, v in splits["train"].items()})
        self.fit_val_set = SliceDataset({k: v[:n_fit_val] for k, v in splits["train"].items()})
        self.eval_sets = [VolumeDataset(splits[s]) for s in ("val", "test", "healthy_test")]

    def train_dataloader(self):
        hp = self.hparams
        return make_loader(self.train_set, hp.batch_size, shuffle=True, seed=hp.split_seed, num_workers=hp.num_workers)

    def val_dataloader(self):
        return make_loader(self.fit_val_set, 64, shuffle=False, num_workers=self.hparams.num_workers)

    def test_dataloader(self):
        return [make_loader(s, 1, shuffle=False, num_workers=self.hparams.num_workers) for s in self.eval_sets]


class NovaDataModule(pl.LightningDataModule):
    """NOVA (evaluation only): 2D brain MRI slices with gold bounding boxes, scored by box detection.

    ``test`` has one loader of single images (``image``, ``brain``, ``lesion`` ``[1, 1, S, S]``, ``boxes [K, 4]``);
    models trained on healthy IXI slices are tested on it (``test --ckpt_path``). The NOVA protocol's constants
    (``box_threshold``, ``max_boxes``) live here because they belong to the benchmark, not to a model; the
    evaluation in :class:`~ca_diffusion_uad.lightning_module.ReconstructionUAD` reads them from this module.

    Args:
        data_dir: Folder with ``NOVA_metadata.csv`` (columns ``filename``, ``caption``, ``bbox_gold``) and
            ``images/<filename>`` (the PNG slices, 480 px in the release).
        image_size: Side the images (and boxes) are resized to: the model's input size.
        caption_filter: Keep rows whose caption contains this text (``"T2"``: the paper's T2 subset; ``null``: all).
        box_threshold: Anomaly-map value above which pixels form predicted boxes (the paper: 0.5).
        max_boxes: Predicted boxes kept per image, largest area first (the reference evaluation: 5).
        foreground_threshold: Intensity above which a pixel belongs to the scored head region.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        image_size: int = 96,
        caption_filter: str | None = "T2",
        box_threshold: float = 0.5,
        max_boxes: int = 5,
        foreground_threshold: float = 0.05,
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.box_threshold, self.max_boxes = box_threshold, max_boxes

    def _root(self) -> Path:
        return require_dataset(
            self.hparams.data_dir, "NOVA (evaluation-only brain MRI slices with boxes)", HOW_TO_GET["NOVA"], NOVA_LAYOUT
        )

    def prepare_data(self) -> None:
        self._root()  # before any run folder is written

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        self.test_set = read_nova(self._root(), hp.image_size, hp.caption_filter, hp.foreground_threshold)

    def train_dataloader(self):
        raise RuntimeError(
            "NOVA is evaluation-only: train on IXI (configs/paper/brats21_*.yaml), then run `test` with a "
            "configs/paper/nova_*.yaml config and --ckpt_path"
        )

    def test_dataloader(self):
        return make_loader(self.test_set, 1, shuffle=False, num_workers=self.hparams.num_workers)
