"""The paper's augmentation (mirror, flip, rotation +/-20 degrees) with MONAI dictionary transforms.

Every sample's random draws come from a seed derived from ``(run seed, epoch, dataset index)`` only, so a run resumed
from a checkpoint replays the same augmentations, and DDP ranks (which see different indices) draw different ones.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd, RandRotated

KEYS = ("image", "mask")


def paper_augmentation(
    mirror_p: float = 0.5,
    flip_p: float = 0.5,
    max_rotation_deg: float = 20.0,
    crop_size: int | None = None,
    crop_foreground_p: float = 0.5,
) -> Compose:
    """MONAI transforms of one sample ``{"image": [C, H, W], "mask": [1, H, W]}``, applied to image and mask alike.

    Mirror = left-right flip (column axis), flip = up-down flip (row axis), then a rotation by an angle uniform in
    ``[-max_rotation_deg, max_rotation_deg]`` about the slice centre. The image is resampled bilinearly, the mask with
    nearest neighbours so that it stays binary; pixels rotated in from outside are 0 (air after windowing).

    Args:
        mirror_p: Probability of a left-right mirror.
        flip_p: Probability of an up-down flip.
        max_rotation_deg: Largest rotation angle in degrees (0 disables the rotation).
        crop_size: If set, first cut a ``crop_size`` square patch (MONAI's RandCropByPosNegLabeld), centred on a
            nodule pixel with probability ``crop_foreground_p`` and on a background pixel otherwise. Not in the
            paper; it lets the CPU analogue train on fine-resolution slices at the cost of coarse ones.
        crop_foreground_p: See ``crop_size``.
    """
    crop = []
    if crop_size is not None:
        crop = [
            RandCropByPosNegLabeld(
                KEYS,
                label_key="mask",
                spatial_size=(crop_size, crop_size),
                pos=crop_foreground_p,
                neg=1.0 - crop_foreground_p,
                num_samples=1,
            )
        ]
    # spatial_axis counts spatial dimensions only (the channel axis excluded): 0 = rows, 1 = columns.
    return Compose(
        [
            *crop,
            RandFlipd(KEYS, prob=mirror_p, spatial_axis=1),
            RandFlipd(KEYS, prob=flip_p, spatial_axis=0),
            RandRotated(
                KEYS,
                range_x=math.radians(max_rotation_deg),
                prob=1.0 if max_rotation_deg > 0 else 0.0,
                keep_size=True,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
        ]
    )


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends only on ``(seed, epoch, index)`` (mixed by NumPy's SeedSequence)."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, index]).generate_state(1)[0])


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def augment(
    transform: Compose,
    image: torch.Tensor,
    mask: torch.Tensor,
    *,
    seed: int,
    epoch: int,
    indices: Sequence[int] | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``transform`` to every sample of a batch, each with the random state of its ``(seed, epoch, index)``.

    Args:
        transform: A MONAI dictionary transform over the keys ``"image"`` and ``"mask"`` (e.g.
            :func:`paper_augmentation`).
        image: ``[B, C, H, W]`` float.
        mask: ``[B, 1, H, W]`` float (0/1).
        seed: The run's seed.
        epoch: The training epoch.
        indices: Dataset index of each sample ``[B]``.

    Returns:
        The augmented image ``[B, C, h, w]`` and mask ``[B, 1, h, w]`` (``h, w = H, W`` unless the transform crops),
        same dtypes.
    """
    images, masks = [], []
    for img, msk, idx in zip(image, mask, torch.as_tensor(indices).tolist()):
        transform.set_random_state(seed=sample_seed(seed, epoch, int(idx)))
        with warnings.catch_warnings():
            # Empty slices have no nodule pixel to centre a crop on; MONAI falls back to background, as intended.
            warnings.filterwarnings("ignore", message="Num foregrounds 0")
            out = transform({"image": img, "mask": msk})
        if isinstance(out, list):  # a random crop returns a list of num_samples (= 1) samples
            out = out[0]
        images.append(_plain(out["image"]).to(image.dtype))
        masks.append(_plain(out["mask"]).to(mask.dtype))
    return torch.stack(images), torch.stack(masks)
