"""Data: posed views as rays. Real NeRF-Synthetic / Synthetic-NSVF / LLFF scenes, or the offline procedural scene.

All sources end in the same tensors (ray origins, unit directions, colours on the background), so everything after
the loader is shared. The offline scene is written by :func:`reprokit.scenes.generate_blender_scene` in the Blender
layout and read back by the same reader as NeRF-Synthetic. LLFF (forward-facing) rays are mapped to NDC
(:func:`boost_nerf.llff.ndc_rays`) and carry their world-space view directions in ``viewdirs`` for the colour MLPs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from reprokit.data import make_loader, require_dataset
from reprokit.scenes import BlenderSplit, camera_rays, generate_blender_scene, read_blender_split
from torch.nn import functional as F
from torch.utils.data import Dataset

from boost_nerf.llff import LLFF_HOW, LLFFScene, holdout_split, ndc_rays, read_llff

BLENDER_HOW = (
    "download nerf_synthetic.zip (NeRF authors' Google Drive, linked from https://github.com/bmild/nerf) and point "
    "data_dir at one scene folder, e.g. data/nerf_synthetic/lego"
)
NSVF_HOW = (
    "download Synthetic_NSVF.zip from https://github.com/facebookresearch/NSVF (section Data) and point data_dir at "
    "one scene folder, e.g. data/Synthetic_NSVF/Wineholder"
)
#: NSVF file-name prefixes of the splits.
NSVF_PREFIX = {"train": "0_", "val": "1_", "test": "2_"}


def default_cache_dir() -> Path:
    """Where generated offline scenes are cached: ``$REPROKIT_CACHE`` or ``~/.cache/reprokit``."""
    return Path(os.environ.get("REPROKIT_CACHE", Path.home() / ".cache" / "reprokit"))


def read_nsvf_split(root: Path, split: str, image_size: int | None = None) -> BlenderSplit:
    """Read a Synthetic-NSVF scene split (``intrinsics.txt``, ``pose/<p>*.txt`` OpenCV c2w, ``rgb/<p>*.png`` RGBA).

    Poses are converted to the OpenGL convention of :mod:`reprokit.scenes` (flip the camera's y and z axes).
    """
    from PIL import Image

    focal = float((root / "intrinsics.txt").read_text().split()[0])
    names = sorted(p.stem for p in (root / "pose").glob(f"{NSVF_PREFIX[split]}*.txt"))
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    images, poses = [], []
    for name in names:
        img = torch.from_numpy(np.asarray(Image.open(root / "rgb" / f"{name}.png").convert("RGBA"), np.float32) / 255)
        images.append(img)
        poses.append(torch.from_numpy(np.loadtxt(root / "pose" / f"{name}.txt", dtype=np.float32)).view(4, 4) @ flip)
    width = images[0].shape[1]
    angle = 2 * float(np.arctan(0.5 * width / focal))
    out = BlenderSplit(torch.stack(images), torch.stack(poses), angle, names)
    if image_size is not None and image_size != width:
        prem = torch.cat([out.images[..., :3] * out.images[..., 3:], out.images[..., 3:]], -1).permute(0, 3, 1, 2)
        prem = torch.nn.functional.interpolate(prem, size=(image_size, image_size), mode="area").permute(0, 2, 3, 1)
        out.images = torch.cat([prem[..., :3] / prem[..., 3:].clamp_min(1e-8), prem[..., 3:]], -1).clamp(0, 1)
    return out


def split_to_rays(split: BlenderSplit | LLFFScene, background: float) -> dict[str, torch.Tensor]:
    """Rays of every pixel, each ``[N, H, W, 3]``.

    Blender/NSVF/offline: ``origins``, unit ``dirs`` and ``rgb`` composited on ``background``. LLFF: ``origins`` and
    unit ``dirs`` in NDC (the sampler then works in the cube ``[-1, 1]^3``, near = 0 and far = 1 along the NDC
    ray), ``viewdirs`` the world-space unit directions (what the colour MLPs see), and ``rgb`` as photographed.
    """
    origins, dirs = camera_rays(split.height, split.width, split.focal, split.c2w)
    if isinstance(split, LLFFScene):
        o_ndc, d_ndc = ndc_rays(origins, dirs, split.height, split.width, split.focal, near=1.0)
        # Unit NDC directions: the sampler steps a fixed NDC length, so only the parametrisation of t changes.
        return {"origins": o_ndc, "dirs": F.normalize(d_ndc, dim=-1), "viewdirs": dirs, "rgb": split.images}
    return {"origins": origins, "dirs": dirs, "rgb": split.rgb(background)}


class RayDataset(Dataset):
    """Individual rays of all training views; batches are gathered in one indexing op (``__getitems__``)."""

    def __init__(self, rays: dict[str, torch.Tensor]):
        self.rays = {k: v.reshape(-1, 3).contiguous() for k, v in rays.items()}

    def __len__(self) -> int:
        return len(self.rays["rgb"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.rays.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return {k: v[idx] for k, v in self.rays.items()}


class ViewDataset(Dataset):
    """Whole views (validation/test): each item holds one view's rays ``[H, W, 3]`` and its index."""

    def __init__(self, rays: dict[str, torch.Tensor]):
        self.rays = rays

    def __len__(self) -> int:
        return len(self.rays["rgb"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {**{k: v[index] for k, v in self.rays.items()}, "index": torch.tensor(index)}


def _batched(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch


class SceneDataModule(pl.LightningDataModule):
    """Posed views of one scene as rays.

    Args:
        source: ``"offline"`` (procedural scene, the CPU-scale analogue), ``"blender"`` (a NeRF-Synthetic scene),
            ``"nsvf"`` (a Synthetic-NSVF scene) or ``"llff"`` (a forward-facing LLFF scene, NDC rays; use the model's
            ``aabb = [-1, -1, -1, 1, 1, 1]`` and ``background = 0``).
        data_dir: The scene folder (``source`` blender, nsvf or llff).
        image_size: Square image size the views are resized to (None: keep; NeRF-Synthetic is 800). Must be None for
            LLFF, whose size is set by ``llff_factor``.
        llff_factor: LLFF downsampling factor: reads ``images_<factor>/`` (DVGO: 4, i.e. 1008 x 756).
        batch_size: Rays per training step (DVGO: 8192).
        background: Background colour the RGBA views are composited on (1 = white).
        max_test_views: Use only the first views of the test split (None: all).
        offline_views: Training views of the offline scene.
        offline_val_views: Validation views of the offline scene.
        offline_test_views: Test views of the offline scene.
        offline_seed: Seed of the offline scene (shapes and training cameras).
        offline_supersample: Rays per pixel side when rendering the offline scene.
        cache_dir: Where the offline scene is generated (default: ``$REPROKIT_CACHE`` or ``~/.cache/reprokit``).
        shuffle_seed: Seed of the ray order (fixed, independent of the training seed).
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        source: Literal["offline", "blender", "nsvf", "llff"] = "offline",
        data_dir: str | None = None,
        image_size: int | None = 32,
        llff_factor: int = 4,
        batch_size: int = 1024,
        background: float = 1.0,
        max_test_views: int | None = None,
        offline_views: int = 100,
        offline_val_views: int = 4,
        offline_test_views: int = 8,
        offline_seed: int = 0,
        offline_supersample: int = 2,
        cache_dir: str | None = None,
        shuffle_seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        if source == "llff" and image_size is not None:
            raise ValueError("LLFF images keep their aspect ratio: set image_size to null and choose llff_factor")
        self.save_hyperparameters()
        self._llff: LLFFScene | None = None

    def _real_root(self) -> Path:
        hp = self.hparams
        if hp.source == "llff":
            return require_dataset(hp.data_dir, "LLFF scene", LLFF_HOW, ["poses_bounds.npy"])
        if hp.source == "blender":
            return require_dataset(
                hp.data_dir, "NeRF-Synthetic scene", BLENDER_HOW, ["transforms_train.json", "transforms_test.json"]
            )
        return require_dataset(hp.data_dir, "Synthetic-NSVF scene", NSVF_HOW, ["intrinsics.txt", "pose", "rgb"])

    def offline_root(self) -> Path:
        """Folder of the offline scene (generated on first use)."""
        hp = self.hparams
        size = hp.image_size or 64
        name = (
            f"scene_s{hp.offline_seed}_{size}px_{hp.offline_views}-{hp.offline_val_views}-{hp.offline_test_views}"
            f"_ss{hp.offline_supersample}"
        )
        return generate_blender_scene(
            Path(hp.cache_dir) if hp.cache_dir else default_cache_dir() / "scenes" / name,
            image_size=size,
            n_train=hp.offline_views,
            n_val=hp.offline_val_views,
            n_test=hp.offline_test_views,
            seed=hp.offline_seed,
            supersample=hp.offline_supersample,
        )

    def prepare_data(self) -> None:
        # Runs once before any run folder is written: a missing dataset fails early and leaves nothing behind.
        if self.hparams.source == "offline":
            self.offline_root()
        else:
            self._real_root()

    def read_split(self, split: str) -> BlenderSplit:
        """One split of the configured scene (resized to ``image_size``)."""
        hp = self.hparams
        if hp.source == "offline":
            return read_blender_split(self.offline_root(), split, image_size=hp.image_size)
        root = self._real_root()
        if hp.source == "llff":
            if self._llff is None:
                self._llff = read_llff(root, hp.llff_factor)
            scene = self._llff
            train, test = holdout_split(len(scene.images))
            idx = train if split == "train" else test  # NeRF/DVGO validate on the held-out views too
            return LLFFScene(
                scene.images[idx], scene.c2w[idx], scene.bounds[idx], scene.focal, [scene.names[i] for i in idx]
            )
        if hp.source == "blender":
            return read_blender_split(root, split, image_size=hp.image_size)
        return read_nsvf_split(root, split, hp.image_size)

    def setup(self, stage: str | None = None) -> None:
        bg = self.hparams.background
        if stage in ("fit", None):
            self.train_set = RayDataset(split_to_rays(self.read_split("train"), bg))
        if stage in ("fit", "validate", None):
            self.val_set = ViewDataset(split_to_rays(self.read_split("val"), bg))
        if stage in ("test", "predict", None):
            test = self.read_split("test")
            if self.hparams.max_test_views is not None:
                test.images, test.c2w = (
                    test.images[: self.hparams.max_test_views],
                    test.c2w[: self.hparams.max_test_views],
                )
            self.test_split = test
            self.test_set = ViewDataset(split_to_rays(test, bg))

    def train_dataloader(self):
        return make_loader(
            self.train_set,
            self.hparams.batch_size,
            shuffle=True,
            seed=self.hparams.shuffle_seed,
            num_workers=self.hparams.num_workers,
            drop_last=True,
            collate_fn=_batched,
        )

    def val_dataloader(self):
        return make_loader(self.val_set, 1, shuffle=False, num_workers=self.hparams.num_workers)

    def test_dataloader(self):
        return make_loader(self.test_set, 1, shuffle=False, num_workers=self.hparams.num_workers)

    def predict_dataloader(self):
        return self.test_dataloader()
