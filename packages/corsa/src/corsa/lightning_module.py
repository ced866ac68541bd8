"""Lightning wiring of the two steps around :mod:`corsa.model` and :mod:`corsa.fairkl`."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torchmetrics.classification import MultilabelAUROC

from corsa.fairkl import fairkl
from corsa.hierarchy import HIERARCHIES
from corsa.metrics import ScreeningMetrics
from corsa.model import (
    CovidHead,
    Encoder,
    FineTune,
    HierarchicalResidualHead,
    UncertainPolicy,
    apply_uncertain_policy,
    build_encoder,
    load_xrv_densenet,
    positive_weights,
    set_finetune,
    weighted_bce,
)


class FindingsPretraining(pl.LightningModule):
    """Step 1: multi-label findings with the hierarchical residual head and class-weighted BCE.

    Args:
        encoder: ``densenet121``, ``resnet50`` or ``small_cnn``.
        width: First-block width of ``small_cnn``.
        hierarchy: ``chexpert`` (14 labels) or ``offline`` (the analogue's 9 CheXpert labels).
        uncertain_policy: What uncertain (-1) labels become: zeros, ones, half (0.5, the paper) or ignore.
        class_weighted: Weight positives by #neg/#pos of the training labels.
        xrv_weights: Initialise a DenseNet-121 from these torchxrayvision weights when they are on disk (or None).
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        plateau_patience: ReduceLROnPlateau patience (epochs, on val/loss).
    """

    def __init__(
        self,
        encoder: Encoder = "small_cnn",
        width: int = 16,
        hierarchy: str = "offline",
        uncertain_policy: UncertainPolicy = "half",
        class_weighted: bool = True,
        xrv_weights: str | None = None,
        lr: float = 1e-2,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        plateau_patience: int = 5,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.hierarchy = HIERARCHIES[hierarchy]
        self.encoder = build_encoder(encoder, width)
        if xrv_weights:
            load_xrv_densenet(self.encoder, xrv_weights)
        self.head = HierarchicalResidualHead(self.encoder.num_features, self.hierarchy)
        n = len(self.hierarchy.labels)
        self.register_buffer("pos_weight", torch.ones(n))
        self.val_auc = MultilabelAUROC(n, average="macro")
        self.test_auc = MultilabelAUROC(n, average="macro")

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and self.hparams.class_weighted and dm is not None:
            targets, mask = apply_uncertain_policy(dm.train_set.targets, self.hparams.uncertain_policy)
            self.pos_weight.copy_(positive_weights(targets, mask))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets, mask = apply_uncertain_policy(labels, self.hparams.uncertain_policy)
        return weighted_bce(logits, targets, mask, self.pos_weight)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self._loss(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val/loss", self._loss(logits, y), sync_dist=True, prog_bar=True)
        self.val_auc(logits, (y == 1).long())
        self.log("val/auc", self.val_auc)

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("test/loss", self._loss(logits, y), sync_dist=True)
        self.test_auc(logits, (y == 1).long())
        self.log("test/auc", self.test_auc)

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=hp.plateau_patience)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss"}}


class CovidFineTuning(pl.LightningModule):
    """Step 2: binary COVID from the step-1 encoder, ``CE(weight) + lambda * FairKL(embedding, covid, hospital)``.

    Args:
        encoder: ``densenet121``, ``resnet50`` or ``small_cnn`` (must match the step-1 checkpoint).
        width: First-block width of ``small_cnn``.
        pretrained_ckpt: Step-1 checkpoint whose encoder initialises this one (None: from scratch).
        finetune: ``freeze`` the encoder, train its ``last_block`` only, or ``full``.
        hidden: Embedding size of the head (128 in the paper).
        class_weights: Cross-entropy weights of [negative, COVID] ([0.56, 0.43] in the paper).
        fairkl_lambda: Weight of FairKL (0 = plain cross-entropy).
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        milestones: Epochs at which the learning rate is divided by 10.
    """

    def __init__(
        self,
        encoder: Encoder = "small_cnn",
        width: int = 16,
        pretrained_ckpt: str | None = None,
        finetune: FineTune = "full",
        hidden: int = 128,
        class_weights: tuple[float, float] = (0.56, 0.43),
        fairkl_lambda: float = 0.0,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        milestones: tuple[int, ...] = (33, 66),
    ):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = build_encoder(encoder, width)
        set_finetune(self.encoder, finetune)
        self.head = CovidHead(self.encoder.num_features, hidden)
        self.register_buffer("ce_weight", torch.tensor(class_weights, dtype=torch.float32), persistent=False)

    def setup(self, stage: str) -> None:
        # The step-1 encoder is read here, not in __init__: a resumed run overwrites it with its own checkpoint anyway.
        if stage == "fit" and self.hparams.pretrained_ckpt:
            self.load_step1_encoder(self.hparams.pretrained_ckpt)
        dm = getattr(self.trainer, "datamodule", None)
        names = getattr(dm, "group_names", ("group",))
        majority = getattr(dm, "majority_label", None)
        self.val_metrics = ScreeningMetrics(names, majority)
        self.test_metrics = ScreeningMetrics(names, majority)

    def load_step1_encoder(self, path: str) -> None:
        """Copy the encoder weights of a step-1 (:class:`FindingsPretraining`) checkpoint into this encoder."""
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        if not encoder:
            raise ValueError(f"{path} holds no encoder weights: is it a step-1 checkpoint?")
        self.encoder.load_state_dict(encoder)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, 2], embedding [B, hidden])`` of images ``[B, 1, H, W]``."""
        return self.head(self.encoder(x))

    def training_step(self, batch, batch_idx):
        x, y, hospital = batch
        if self.hparams.finetune == "freeze":
            self.encoder.eval()  # a frozen encoder keeps its BatchNorm statistics too
        logits, z = self(x)
        ce = F.cross_entropy(logits, y, weight=self.ce_weight)
        loss = ce
        if self.hparams.fairkl_lambda > 0:
            reg = fairkl(z, y, hospital)
            loss = ce + self.hparams.fairkl_lambda * reg
            self.log("train/fairkl", reg)
        self.log("train/ce", ce)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch, metrics: ScreeningMetrics, prefix: str):
        x, y, hospital = batch
        logits, _ = self(x)
        self.log(f"{prefix}/loss", F.cross_entropy(logits, y, weight=self.ce_weight), sync_dist=True)
        metrics.update(logits.softmax(1)[:, 1], y, hospital)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_metrics, "test")

    def _log_metrics(self, metrics: ScreeningMetrics, prefix: str, keys=None) -> None:
        values = metrics.compute()  # already gathered across processes
        metrics.reset()
        self.log_dict(
            {f"{prefix}/{k}": v for k, v in values.items() if (keys is None or k in keys) and v == v},
            sync_dist=False,
            rank_zero_only=False,
        )

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val", ("all/bacc", "all/auc", "conflicting/acc"))

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(hp.milestones), gamma=0.1)
        return [opt], [sched]
