"""Pruning as a Lightning callback: the round schedule, LR rewinding and one checkpoint per round.

Epochs are grouped into rounds: round 0 trains the dense model for ``first_round_epochs``, every later round starts
by pruning to the next sparsity of the ladder and then trains for ``epochs_per_round``. Everything is a function of
the epoch number, so a run resumed from any checkpoint takes exactly the same path as an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
from reprokit.results import atomic_write_json
from torch.nn import functional as F

from pruning_vision.pruning import magnitude_prune, measured_sparsity, prunable_layers, schedule, snip_prune


class IterativePruning(pl.Callback):
    """Iterative global unstructured pruning between training rounds (or one-shot SNIP before training).

    Args:
        method: ``"magnitude"``: iterative global magnitude pruning, ``rate`` of the remaining weights per round;
            ``"snip"``: one-shot SNIP to ``target`` before the first epoch, then plain training.
        rate: Share of the remaining weights pruned per round.
        target: Final sparsity; the ladder stops at the first round reaching it.
        layer_types: Layer kinds whose weights are pruned (``"Conv2d"``, ``"Linear"``).
        first_round_epochs: Epochs of dense training (round 0).
        epochs_per_round: Epochs of training after each pruning step.
        rewind: Learning-rate rewinding: at every round start the LR schedule restarts and the optimizer state is
            reset (as if optimizer and scheduler were rebuilt); otherwise training simply continues (fine-tuning).
        save_rounds: Save a checkpoint at the end of every round (``rounds/round<k>.ckpt``, plus ``rounds.json``
            with each round's measured sparsity) in the run folder.
    """

    def __init__(
        self,
        method: Literal["magnitude", "snip"] = "magnitude",
        rate: float = 0.2,
        target: float = 0.95,
        layer_types: tuple[str, ...] = ("Conv2d",),
        first_round_epochs: int = 1,
        epochs_per_round: int = 1,
        rewind: bool = False,
        save_rounds: bool = True,
    ):
        super().__init__()
        self.method, self.rate, self.target = method, rate, target
        self.layer_types = tuple(layer_types)
        self.first, self.per_round = first_round_epochs, epochs_per_round
        self.rewind, self.save_rounds = rewind, save_rounds
        self.ladder = schedule(rate, target) if method == "magnitude" else [0.0, target]

    # ---------------------------------------------------------------------------------------------- the schedule
    @property
    def total_epochs(self) -> int:
        """Epochs of the whole ladder (``trainer.max_epochs`` should be at least this)."""
        if self.method == "snip":
            return self.first
        return self.first + self.per_round * (len(self.ladder) - 1)

    def round_of(self, epoch: int) -> int:
        """Round that epoch ``epoch`` belongs to (capped at the last round)."""
        if self.method == "snip" or epoch < self.first:
            return 1 if self.method == "snip" else 0
        return min(1 + (epoch - self.first) // self.per_round, len(self.ladder) - 1)

    def round_start(self, rnd: int) -> int:
        """First epoch of round ``rnd``."""
        if self.method == "snip":
            return 0
        return 0 if rnd == 0 else self.first + (rnd - 1) * self.per_round

    def round_end(self, rnd: int) -> int:
        """Last epoch of round ``rnd``."""
        if self.method == "snip":
            return self.first - 1
        return self.first - 1 if rnd == 0 else self.first + rnd * self.per_round - 1

    # ---------------------------------------------------------------------------------------------------- hooks
    def _layers(self, pl_module: pl.LightningModule):
        return [m for _, m in prunable_layers(pl_module.backbone, self.layer_types)]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        rnd = self.round_of(epoch)
        layers = self._layers(pl_module)
        goal = self.ladder[rnd]
        if epoch == self.round_start(rnd) and measured_sparsity(layers) < goal - 1e-9:
            # Pruning depends only on the weights (or on a fixed batch for SNIP), so redoing it after a resume
            # from the previous epoch's checkpoint gives the same masks.
            if self.method == "magnitude":
                magnitude_prune(layers, goal)
            else:
                x = next(iter(trainer.datamodule.train_dataloader()))
                batch = {k: v.to(pl_module.device) for k, v in x.items() if torch.is_tensor(v)}
                snip_prune(
                    pl_module.backbone,
                    layers,
                    lambda logits: F.cross_entropy(logits, batch["label"]),
                    batch["image"],
                    goal,
                )
            if self.rewind:
                for opt in trainer.optimizers:
                    opt.state.clear()
        # LR rewinding restarts the module's LR schedule at each round; fine-tuning follows the global epoch.
        if self.rewind:
            pl_module.set_lr(epoch - self.round_start(rnd), self.round_end(rnd) - self.round_start(rnd) + 1)
        else:
            pl_module.set_lr(epoch, trainer.max_epochs)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        rnd = self.round_of(epoch)
        sparsity = measured_sparsity(self._layers(pl_module))
        pl_module.log("sparsity", sparsity, sync_dist=False)
        if not self.save_rounds or epoch != self.round_end(rnd) or trainer.log_dir is None:
            return
        folder = Path(trainer.log_dir) / "rounds"
        path = folder / f"round{rnd:02d}.ckpt"
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            index = folder / "rounds.json"
            rows = json.loads(index.read_text()) if index.exists() else []
            rows = [r for r in rows if r["round"] != rnd]
            rows.append(
                {"round": rnd, "sparsity": sparsity, "target": self.ladder[rnd], "epoch": epoch, "ckpt": str(path)}
            )
            atomic_write_json(index, sorted(rows, key=lambda r: r["round"]))
