"""Lightning wrapper: training and evaluation wiring around any capsule network returning a CapsOutput."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from capsnet_rem.capsules import margin_loss, reconstruction_loss
from capsnet_rem.metrics import ParseTrees
from capsnet_rem.rem import sparsity


class CapsuleClassifier(pl.LightningModule):
    """Margin (+ masked reconstruction) loss, Adam with per-epoch exponential lr decay, REM's test metrics.

    Args:
        net: The capsule network (``capsnet_rem.model.CapsNet`` or ``capsnet_rem.efficient.BackboneCapsNet``).
        num_classes: Number of classes.
        lr: Adam learning rate.
        lr_decay: Multiplicative lr decay per epoch.
        recon_weight: Weight of the reconstruction loss (used only when the network has a decoder).
        m_pos: Margin for the true class.
        m_neg: Margin for the other classes.
        neg_weight: Down-weighting of the other classes' margin term.
        tree_bins: Bins of the coupling coefficients in the parse-tree metrics (11; Tiny-ImageNet 128).
        compile_net: Run the network through ``torch.compile`` in training and evaluation steps (measured on the
            2-core CPU: Sabour CapsNet training step 1.27x faster after 25-29 s of compilation, capsule lengths equal
            to the eager network's within 2e-6). The threshold search of ``REMPruning`` keeps calling the eager
            network.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int = 10,
        lr: float = 1e-3,
        lr_decay: float = 0.99,
        recon_weight: float = 0.0005,
        m_pos: float = 0.9,
        m_neg: float = 0.1,
        neg_weight: float = 0.5,
        tree_bins: int = 11,
        compile_net: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        # A plain attribute, not a submodule: the compiled wrapper shares net's parameters, and registering it would
        # add a second copy of every key (``_orig_mod.*``) to the state dict.
        object.__setattr__(self, "_run_net", torch.compile(net) if compile_net else net)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_trees = ParseTrees(num_classes, tree_bins)

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None):
        return self._run_net(x, target)

    def _margin(self, lengths: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return margin_loss(lengths, y, self.hparams.m_pos, self.hparams.m_neg, self.hparams.neg_weight)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x, y)
        margin = self._margin(out.lengths, y)
        loss = margin
        if out.reconstruction is not None:
            loss = loss + self.hparams.recon_weight * reconstruction_loss(out.reconstruction, x)
        self.log("train/margin_loss", margin)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.val_acc(out.lengths, y)
        self.log("val/margin_loss", self._margin(out.lengths, y), sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.test_acc(out.lengths, y)
        self.test_trees.update(out.coupling, out.lengths.argmax(1))
        self.log("test/margin_loss", self._margin(out.lengths, y), sync_dist=True)
        self.log("test/acc", self.test_acc)

    def on_test_epoch_end(self) -> None:
        stats = self.test_trees.compute()
        for name in ("trees", "entropy", "coef_entropy"):
            self.log(f"test/{name}_mean", stats[f"{name}_mean"].float(), sync_dist=True)
            self.log(f"test/{name}_std", stats[f"{name}_std"].float(), sync_dist=True)
        self.test_trees.reset()
        prunable = getattr(self.net, "pruning_parameters", self.net.named_parameters)()
        weights = [(n, p) for n, p in prunable if n.rsplit(".", 1)[-1] == "weight"]
        self.log("test/sparsity", sparsity(weights)["global"], sync_dist=True)
        alive = getattr(self.net, "alive_primary_capsules", None)
        if alive is not None:
            self.log("test/primary_capsules", float(alive().sum()), sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=self.hparams.lr_decay)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
