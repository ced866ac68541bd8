"""Posed-image datasets: the procedural offline scene, NeRF-Synthetic (Blender format) and COLMAP scenes.

Every source ends in the same :class:`ViewDataset` (image, world-to-camera matrix in the OpenCV convention,
intrinsics), so the model and the training loop never see where the views came from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from reprokit.data import make_loader, require_dataset
from torch.utils.data import Dataset

HOW_TO_GET = {
    "colmap": "Mip-NeRF360: https://jonbarron.info/mipnerf360/ (360_v2.zip); Tanks&Temples and Deep Blending: the "
    "3DGS release https://repo-sam.inria.fr/fungraph/3d-gaussian-splatting/datasets/input/tandt_db.zip; unpack so "
    "that data_dir holds sparse/0 and the image folder",
    "blender": "NeRF-Synthetic (nerf_synthetic.zip) from https://drive.google.com/drive/folders/"
    "128yBriW1IG_3NJ5Rp7APSTZsJqdJdfc1; point data_dir at one scene folder (e.g. nerf_synthetic/lego)",
}
OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def default_cache() -> Path:
    """Where generated offline scenes are kept: ``$REPROKIT_CACHE`` or ``~/.cache/reprokit``."""
    return Path(os.environ.get("REPROKIT_CACHE", Path.home() / ".cache" / "reprokit"))


def viewmats_from_blender(c2w: torch.Tensor) -> torch.Tensor:
    """World-to-camera matrices (OpenCV) ``[N, 4, 4]`` of Blender/OpenGL camera-to-world matrices ``[N, 4, 4]``."""
    return torch.linalg.inv(c2w.double() @ OPENGL_TO_OPENCV.double()).float()


def intrinsics(focal: float, width: int, height: int) -> torch.Tensor:
    """Pinhole intrinsics ``[3, 3]`` with the principal point at the image centre."""
    return torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


class ViewDataset(Dataset):
    """Posed views: item ``i`` is ``{"image": [H, W, 3] float, "viewmat": [4, 4], "K": [3, 3], "index": int}``.

    Args:
        images: ``[N, H, W, 3]`` uint8 or float in [0, 1].
        viewmats: World-to-camera ``[N, 4, 4]`` (OpenCV).
        Ks: Intrinsics ``[N, 3, 3]``.
    """

    def __init__(self, images: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [N, H, W, 3], got {tuple(images.shape)}")
        if not len(images) == len(viewmats) == len(Ks):
            raise ValueError("images, viewmats and Ks need one entry per view")
        self.images, self.viewmats, self.Ks = images, viewmats.float(), Ks.float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self.images[index]
        image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        return {"image": image, "viewmat": self.viewmats[index], "K": self.Ks[index], "index": torch.tensor(index)}


def blender_views(root: Path, split: str, image_size: int | None, background: float, max_views: int | None):
    """A :class:`ViewDataset` of one Blender-format split composited on ``background``."""
    from reprokit.scenes import read_blender_split

    s = read_blender_split(root, split, image_size=image_size, max_views=max_views)
    K = intrinsics(s.focal, s.width, s.height).expand(len(s.c2w), 3, 3)
    return ViewDataset(s.rgb(background), viewmats_from_blender(s.c2w), K)


def colmap_views(root: Path, images_dir: str, test_every: int):
    """Train/test :class:`ViewDataset` s of a COLMAP scene (every ``test_every``-th image held out) and its points."""
    from PIL import Image

    from gode.colmap import read_colmap

    model = read_colmap(root / "sparse" / "0")
    images, Ks = [], []
    for name, K, (width, height) in zip(model.names, model.Ks, model.sizes):
        img = Image.open(root / images_dir / name).convert("RGB")
        images.append(torch.from_numpy(np.asarray(img)))
        # COLMAP's cameras describe the full-resolution images; rescale to the (downscaled) files actually read.
        K = K.clone()
        K[0] *= img.width / width
        K[1] *= img.height / height
        Ks.append(K)
    images_t, Ks_t = torch.stack(images), torch.stack(Ks)
    index = torch.arange(len(images_t))
    test = index % test_every == 0
    train_set = ViewDataset(images_t[~test], model.viewmats[~test], Ks_t[~test])
    test_set = ViewDataset(images_t[test], model.viewmats[test], Ks_t[test])
    return train_set, test_set, model.points, model.colors


class SceneDataModule(pl.LightningDataModule):
    """One scene's posed images, one view per training step.

    Args:
        source: ``"offline"`` (the procedural scene of ``reprokit.scenes``: the CPU-scale analogue), ``"blender"``
            (NeRF-Synthetic layout) or ``"colmap"`` (Mip-NeRF360, Tanks&Temples, Deep Blending).
        data_dir: Scene folder (``blender``/``colmap``); for ``offline`` the cache folder (default
            ``$REPROKIT_CACHE`` or ``~/.cache/reprokit``).
        name: Dataset/scene name used in messages and tables.
        image_size: Square image size for Blender-format scenes (None: native).
        images_dir: COLMAP image folder (``images_4`` is the 3DGS convention for Mip-NeRF360 outdoor scenes).
        test_every: COLMAP hold-out: every n-th image is a test view (the 3DGS "llffhold" of 8).
        background: Background grey level for Blender-format (RGBA) images.
        n_train: Offline scene: training views.
        n_val: Offline scene: validation views.
        n_test: Offline scene: test views.
        scene_seed: Offline scene: seed of shapes and cameras.
        max_val_views: Validation uses at most this many views.
        split_seed: Seed of the training view order.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        source: Literal["offline", "blender", "colmap"] = "offline",
        data_dir: str | None = None,
        name: str = "procedural scene",
        image_size: int | None = 64,
        images_dir: str = "images_4",
        test_every: int = 8,
        background: float = 1.0,
        n_train: int = 60,
        n_val: int = 4,
        n_test: int = 8,
        scene_seed: int = 0,
        max_val_views: int = 4,
        split_seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.points: torch.Tensor | None = None
        self.colors: torch.Tensor | None = None

    def _root(self) -> Path:
        hp = self.hparams
        if hp.source == "colmap":
            layout = ["sparse/0/cameras.*", "sparse/0/images.*", "sparse/0/points3D.*", hp.images_dir]
        else:
            layout = ["transforms_train.json", "transforms_test.json"]
        return require_dataset(hp.data_dir, hp.name, HOW_TO_GET[hp.source], layout)

    def _offline_root(self) -> Path:
        from reprokit.scenes import generate_blender_scene

        hp = self.hparams
        cache = Path(hp.data_dir) if hp.data_dir else default_cache()
        folder = cache / "scenes" / f"blender_s{hp.scene_seed}_{hp.image_size}px_{hp.n_train}-{hp.n_val}-{hp.n_test}"
        return generate_blender_scene(
            folder, image_size=hp.image_size, n_train=hp.n_train, n_val=hp.n_val, n_test=hp.n_test, seed=hp.scene_seed
        )

    def prepare_data(self) -> None:
        # Runs before any run folder exists, so a missing dataset leaves nothing behind.
        if self.hparams.source == "offline":
            self._offline_root()
        else:
            self._root()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if hp.source == "colmap":
            self.train_set, self.test_set, self.points, self.colors = colmap_views(
                self._root(), hp.images_dir, hp.test_every
            )
            n_val = min(hp.max_val_views, len(self.test_set))
            self.val_set = torch.utils.data.Subset(self.test_set, range(n_val))
            return
        root = self._offline_root() if hp.source == "offline" else self._root()
        size = hp.image_size
        self.train_set = blender_views(root, "train", size, hp.background, None)
        has_val = (root / "transforms_val.json").is_file()
        self.val_set = blender_views(root, "val" if has_val else "test", size, hp.background, hp.max_val_views)
        self.test_set = blender_views(root, "test", size, hp.background, None)

    def scene_extent(self) -> float:
        """1.1 x the largest distance of a training camera from the cameras' mean (gsplat's ``scene_scale``)."""
        viewmats = self.train_set.viewmats
        centres = -torch.einsum("nji,nj->ni", viewmats[:, :3, :3], viewmats[:, :3, 3])
        return 1.1 * float((centres - centres.mean(0)).norm(dim=-1).max())

    def train_dataloader(self):
        return make_loader(
            self.train_set, 1, shuffle=True, seed=self.hparams.split_seed, num_workers=self.hparams.num_workers
        )

    def val_dataloader(self):
        return make_loader(self.val_set, 1, shuffle=False, num_workers=self.hparams.num_workers)

    def test_dataloader(self):
        return make_loader(self.test_set, 1, shuffle=False, num_workers=self.hparams.num_workers)
