"""Lightning wrapper: Dice-loss training of a segmentation network on CT slices (wiring only)."""

from __future__ import annotations

import os
from typing import Literal

import pytorch_lightning as pl
import torch
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss
from torch import nn

from lung_seg.augment import augment, paper_augmentation
from lung_seg.metrics import DiceIoU
from lung_seg.model import UNet, init_output_prior


class NoduleSegmenter(pl.LightningModule):
    """Trains ``net`` with MONAI's Dice loss (or Dice + BCE/focal) on sigmoid outputs; reports the paper's Dice and IoU.

    ``val/loss`` and ``test/loss`` are always the paper's soft-Dice loss, so they compare with its loss curves.

    Args:
        net: The segmentation network (logits ``[B, 1, H, W]``); default: the paper's U-Net.
        lr: Adam learning rate (the paper: 1e-4).
        weight_decay: Adam weight decay (the PyTorch baseline: 1e-4).
        poly_power: Polynomial LR decay power over ``max_epochs`` (the PyTorch baseline: 0.9); None keeps it constant.
        mean: Normalisation mean of the [0, 1] windowed image (the paper: 0.3266).
        std: Normalisation standard deviation (the paper: 0.3551).
        loss: ``"dice"`` (the paper: MONAI's soft Dice per slice), ``"dice_bce"`` (Dice + binary cross-entropy, MONAI's
            DiceCELoss) or ``"dice_focal"`` (Dice + focal loss, MONAI's DiceFocalLoss). The pixel-wise term gives a
            tiny nodule a gradient that does not blow up with 1 / its area, as the Dice term alone does.
        augment: Apply the paper's augmentation while training (MONAI transforms, :mod:`lung_seg.augment`).
        mirror_p: Probability of a left-right mirror.
        flip_p: Probability of an up-down flip.
        max_rotation_deg: Largest rotation angle (the paper: 20).
        train_crop: Train on random ``train_crop`` square patches of the slices (half of them centred on a nodule
            pixel; MONAI's RandCropByPosNegLabeld), or None for whole slices (the paper). Validation, test and
            whole-scan inference always see whole slices.
        threshold: Probability threshold of the metrics (the paper: 0.5).
        output_prior: Initial foreground probability of the output layer (None: PyTorch's default init, as the
            paper); the CPU configs use 0.01 to converge within their few epochs.
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        poly_power: float | None = None,
        loss: Literal["dice", "dice_bce", "dice_focal"] = "dice",
        mean: float = 0.3266,
        std: float = 0.3551,
        augment: bool = True,
        mirror_p: float = 0.5,
        flip_p: float = 0.5,
        max_rotation_deg: float = 20.0,
        train_crop: int | None = None,
        threshold: float = 0.5,
        output_prior: float | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net if net is not None else UNet()
        if output_prior is not None:
            init_output_prior(self.net, output_prior)
        self.loss = make_loss(loss)
        # Validation and test report the paper's soft-Dice loss whatever the training objective is.
        self.dice_loss = DiceLoss(sigmoid=True)
        if augment:
            self.augmentation = paper_augmentation(mirror_p, flip_p, max_rotation_deg, crop_size=train_crop)
        elif train_crop is not None:
            self.augmentation = paper_augmentation(0.0, 0.0, 0.0, crop_size=train_crop)
        else:
            self.augmentation = None
        self.val_metrics = DiceIoU(threshold)
        self.test_metrics = DiceIoU(threshold)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 1, H, W]`` of windowed slices ``[B, 1, H, W]`` in [0, 1]."""
        return self.net((image - self.hparams.mean) / self.hparams.std)

    def on_fit_start(self) -> None:
        # The run's seed (set by seed_everything, restored on resume) drives the augmentation together with the epoch
        # and the sample's index: a resumed run replays the same draws, whatever the global RNG did meanwhile.
        self._aug_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))

    def training_step(self, batch, batch_idx):
        image, mask, index = batch  # the training set also returns each slice's dataset index
        if self.augmentation is not None:
            image, mask = augment(
                self.augmentation, image, mask, seed=self._aug_seed, epoch=self.current_epoch, indices=index
            )
        loss = self.loss(self(image), mask)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        image, mask = batch
        logits = self(image)
        self.val_metrics.update(logits, mask)
        self.log("val/loss", self.dice_loss(logits, mask), sync_dist=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metrics.compute()
        self.log_dict({"val/dice": scores["dice"], "val/iou": scores["iou"]}, prog_bar=True)
        self.val_metrics.reset()

    def test_step(self, batch, batch_idx):
        image, mask = batch
        logits = self(image)
        self.test_metrics.update(logits, mask)
        self.log("test/loss", self.dice_loss(logits, mask), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        scores = self.test_metrics.compute()
        self.log_dict({"test/dice": scores["dice"], "test/iou": scores["iou"]})
        self.test_metrics.reset()

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.poly_power is None:
            return opt
        total = max(int(self.trainer.max_epochs or 1), 1)
        return [opt], [torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=total, power=self.hparams.poly_power)]


def make_loss(name: str) -> nn.Module:
    """The training loss on logits ``[B, 1, H, W]`` against 0/1 masks of the same shape (see ``NoduleSegmenter``)."""
    if name == "dice":
        return DiceLoss(sigmoid=True)
    if name == "dice_bce":
        return DiceCELoss(sigmoid=True)
    if name == "dice_focal":
        return DiceFocalLoss(sigmoid=True)
    raise ValueError(f"unknown loss {name!r}: expected 'dice', 'dice_bce' or 'dice_focal'")
