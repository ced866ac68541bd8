"""Lightning wiring: train a backbone with SGD and, in ``test``, score the three dimensions the paper studies.

``test`` reports, for the checkpoint it is given: top-1 accuracy; Relevance Mass/Rank Accuracy of each attribution
method against the object masks; LOST CorLoc against the boxes; top-1 accuracy under each parametric distortion;
shape bias on the cue-conflict trials (items with ``texture >= 0``). It also keeps each trial's correctness in
``self.trials`` so that the sweep can compute error consistency between a pruned model and the dense one.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from pruning_vision.alignment import shape_bias
from pruning_vision.attribution import heatmaps
from pruning_vision.distortions import DISTORTIONS, distort
from pruning_vision.lost import lost, patch_boxes_to_pixels
from pruning_vision.metrics import CorLoc, RelevanceMassAccuracy, RelevanceRankAccuracy
from pruning_vision.models import build_backbone
from pruning_vision.pruning import add_masks, prunable_layers

DEFAULT_DISTORTIONS = {
    "contrast": 0.1,
    "uniform_noise": 0.35,
    "low_pass": 1.5,
    "high_pass": 1.0,
    "phase_scrambling": 90.0,
    "power_equalisation": None,
    "rotation": 90,
    "false_colour": None,
    "greyscale": None,
}


class PrunableClassifier(pl.LightningModule):
    """A classifier whose prunable layers carry masks from the start (see :mod:`pruning_vision.pruning`).

    Args:
        arch: Backbone name (``small_resnet``, ``small_vit``, ``resnet18``, ``resnet50``, ``vit_b_32``).
        num_classes: Number of classes.
        image_size: Input side length.
        mask_layers: Layer kinds that get masks (must cover the pruning callback's ``layer_types``).
        optimizer: ``"sgd"`` (the paper's, with ``momentum``) or ``"adamw"`` (trains the small CPU models faster).
        lr: Base learning rate.
        momentum: SGD momentum.
        weight_decay: Weight decay (decoupled for AdamW).
        lr_schedule: ``"step"`` (times ``lr_gamma`` every ``lr_step`` epochs) or ``"cosine"`` (to 0 over a period:
            a pruning round under LR rewinding, the whole run otherwise).
        lr_step: Epochs between steps of the ``step`` schedule.
        lr_gamma: Factor of the ``step`` schedule.
        label_smoothing: Cross-entropy label smoothing.
        normalize: Per-channel ``(mean, std)`` applied inside the model, so attribution sees [0, 1] images.
        attribution: Attribution methods scored in ``test`` (see :data:`pruning_vision.attribution.METHODS`).
        attribution_images: Images per test run scored for attribution (the first ones; -1: all).
        ig_steps: Integrated-Gradients steps.
        lost_k: Lowest-degree patches considered by LOST's seed expansion.
        lost_center: Centre each image's patch features before LOST's similarity graph (see :func:`lost`).
        distortions: ``name -> level`` of the distortions scored in ``test`` (``null`` level where it has none).
        backbone_kwargs: Extra arguments of the backbone (widths, depth, ...).
        decision_groups: For cue-conflict trials whose classes are not the model's own (the 16 model-vs-human
            categories for an ImageNet model): the model's class indices of each category; the decision is the
            category with the highest mean softmax probability. ``None``: the decision is the model's argmax.
    """

    def __init__(
        self,
        arch: str = "small_resnet",
        num_classes: int = 10,
        image_size: int = 32,
        mask_layers: tuple[str, ...] = ("Conv2d", "Linear"),
        optimizer: str = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        lr_schedule: str = "cosine",
        lr_step: int = 30,
        lr_gamma: float = 0.1,
        label_smoothing: float = 0.0,
        normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
        attribution: tuple[str, ...] = ("integrated_gradients", "gradcam", "guided_gradcam"),
        attribution_images: int = 128,
        ig_steps: int = 16,
        lost_k: int = 10,
        lost_center: bool = True,
        distortions: dict[str, float | None] | None = None,
        backbone_kwargs: dict | None = None,
        decision_groups: list[list[int]] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = build_backbone(arch, num_classes, image_size, **(backbone_kwargs or {}))
        add_masks([m for _, m in prunable_layers(self.backbone, mask_layers)])
        if normalize is not None:
            self.register_buffer("mean", torch.tensor(normalize[0]).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(normalize[1]).view(1, -1, 1, 1), persistent=False)
        self.distortions = dict(DEFAULT_DISTORTIONS if distortions is None else distortions)
        unknown = set(self.distortions) - set(DISTORTIONS)
        if unknown:
            raise ValueError(f"unknown distortions {sorted(unknown)}; choose from {sorted(DISTORTIONS)}")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.ood_acc = torch.nn.ModuleDict(
            {d: MulticlassAccuracy(num_classes, average="micro") for d in self.distortions}
        )
        self.rma = torch.nn.ModuleDict({m: RelevanceMassAccuracy() for m in attribution})
        self.rra = torch.nn.ModuleDict({m: RelevanceRankAccuracy() for m in attribution})
        self.corloc = CorLoc()
        self.test_loss = MeanMetric()
        self._attributed = 0
        self._trials: dict[str, list[torch.Tensor]] = {}
        #: Per-trial outcomes of the last ``test`` run, in test-set order: ``clean`` and each distortion name ->
        #: ``[N]`` bool correctness; ``cue_conflict`` -> ``[M]`` bool (decision == shape class); plus
        #: ``cue_conflict_pred``/``_shape``/``_texture`` -> ``[M]`` long.
        self.trials: dict[str, torch.Tensor] = {}

    # -------------------------------------------------------------------------------------------------- model
    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] != self.hparams.image_size:
            side = self.hparams.image_size
            raise ValueError(f"expected RGB images [B, 3, {side}, {side}], got {tuple(x.shape)}")
        return (x - self.mean) / self.std if self.hparams.normalize is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]`` of images ``[B, 3, H, W]`` in [0, 1]."""
        return self.backbone(self._prep(x))

    def set_lr(self, epoch: int, period: int | None) -> None:
        """Set the optimizer's LR for ``epoch`` of a schedule lasting ``period`` epochs."""
        hp = self.hparams
        if hp.lr_schedule == "cosine":
            lr = hp.lr * 0.5 * (1 + math.cos(math.pi * epoch / max(period or 1, 1)))
        else:
            lr = hp.lr * hp.lr_gamma ** (epoch // hp.lr_step)
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr

    def on_train_epoch_start(self) -> None:
        from pruning_vision.callbacks import IterativePruning

        if not any(isinstance(c, IterativePruning) for c in self.trainer.callbacks):
            self.set_lr(self.current_epoch, self.trainer.max_epochs)

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.optimizer != "sgd":
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {hp.optimizer!r}")
        return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)

    # ------------------------------------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch["image"]), batch["label"], label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self(batch["image"])
        self.val_acc(logits, batch["label"])
        self.log("val/loss", F.cross_entropy(logits, batch["label"]), sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    # ---------------------------------------------------------------------------------------------------- test
    def decide(self, logits: torch.Tensor) -> torch.Tensor:
        """Decisions ``[B]`` from logits ``[B, K]``: the argmax, or the best of ``decision_groups`` (mean prob)."""
        groups = self.hparams.decision_groups
        if not groups:
            return logits.argmax(1)
        probs = logits.softmax(1)
        return torch.stack([probs[:, g].mean(1) for g in groups], 1).argmax(1)

    def _keep(self, name: str, value: torch.Tensor) -> None:
        self._trials.setdefault(name, []).append(value.detach().cpu())

    def on_test_start(self) -> None:
        self._attributed = 0
        self._trials = {}

    def on_test_epoch_end(self) -> None:
        self.trials = {k: torch.cat(v) for k, v in self._trials.items()}
        if "cue_conflict_pred" in self.trials:
            pred, shape, texture = (self.trials[f"cue_conflict_{k}"] for k in ("pred", "shape", "texture"))
            differ = shape != texture  # trials whose two cues agree say nothing about the bias
            self.log("test/shape_bias", shape_bias(pred[differ], shape[differ], texture[differ]))
            self.log("test/cue_conflict/shape_acc", (pred == shape).float().mean())
            self.log("test/cue_conflict/texture_acc", (pred == texture).float().mean())

    def test_step(self, batch, batch_idx):
        x, y, idx = batch["image"], batch["label"], batch["index"]
        texture = batch.get("texture", torch.full_like(y, -1))
        conflict = texture >= 0
        labelled = (y >= 0) & ~conflict
        logits = self(x)
        if conflict.any():
            pred = self.decide(logits[conflict])
            self._keep("cue_conflict", pred == batch["shape"][conflict])
            self._keep("cue_conflict_pred", pred)
            self._keep("cue_conflict_shape", batch["shape"][conflict])
            self._keep("cue_conflict_texture", texture[conflict])
        if labelled.any():
            self.test_acc(logits[labelled], y[labelled])
            self.log("test/acc", self.test_acc)
            self.test_loss(F.cross_entropy(logits[labelled], y[labelled], reduction="none"))
            self.log("test/loss", self.test_loss)
            self._keep("clean", logits[labelled].argmax(1) == y[labelled])
            for name, level in self.distortions.items():
                xd = distort(name, x[labelled], level, idx[labelled], seed=0).clamp(0, 1)
                logits_d = self(xd)
                self.ood_acc[name](logits_d, y[labelled])
                self.log(f"test/ood/{name}", self.ood_acc[name])
                self._keep(name, logits_d.argmax(1) == y[labelled])
        masked = batch["mask"].flatten(1).any(1)
        if not masked.any():
            return
        # Object discovery on every masked image: LOST on the backbone's patch features.
        with torch.no_grad():
            feats, grid = self.backbone.patch_features(self._prep(x[masked]))
        boxes, _, _ = lost(feats, grid, self.hparams.lost_k, self.hparams.lost_center)
        self.corloc(patch_boxes_to_pixels(boxes, grid, tuple(x.shape[-2:])), batch["boxes"][masked])
        self.log("test/corloc", self.corloc)
        # Attribution on the first `attribution_images` masked images, explaining the predicted class.
        budget = self.hparams.attribution_images
        take = masked.nonzero().flatten()
        if budget >= 0:
            take = take[: max(budget - self._attributed, 0)]
        if len(take) == 0:
            return
        self._attributed += len(take)
        xa, target, masks = self._prep(x[take]), logits[take].argmax(1), batch["mask"][take]
        with torch.enable_grad():
            for method in self.hparams.attribution:
                maps = heatmaps(method, self.backbone, xa, target, self.hparams.ig_steps)
                self.rma[method](maps, masks)
                self.rra[method](maps, masks)
                self.log(f"test/rma/{method}", self.rma[method])
                self.log(f"test/rra/{method}", self.rra[method])
