"""Lightning wrapper: training/eval wiring around :class:`example_paper.model.MLP`."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from example_paper.model import MLP


class DigitsClassifier(pl.LightningModule):
    """Cross-entropy training of an MLP.

    Args:
        hidden: Hidden width of the MLP.
        dropout: Dropout probability.
        lr: Adam learning rate.
        in_shape: Input image shape ``(C, H, W)``.
        num_classes: Number of classes.
    """

    def __init__(
        self,
        hidden: int = 64,
        dropout: float = 0.1,
        lr: float = 1e-2,
        in_shape: tuple[int, int, int] = (1, 8, 8),
        num_classes: int = 10,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = MLP(in_shape, hidden, num_classes, dropout)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.test_acc(self(x), y)
        self.log("test/acc", self.test_acc)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
