"""REM as a Lightning callback, so it composes with any capsule network that the classifier wraps."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from capsnet_rem.capsules import margin_loss
from capsnet_rem.rem import (
    apply_masks_,
    lobster_,
    nonzero_masks,
    prune_below_,
    search_threshold,
    sparsity,
    threshold_targets,
)


def _pruning_parameters(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    fn = getattr(module, "pruning_parameters", None)
    return fn() if fn is not None else list(module.named_parameters())


class REMPruning(pl.Callback):
    """LOBSTER before every optimizer step, masks after it, and a global threshold search after every epoch.

    Args:
        lambda_max: LOBSTER strength; epoch ``e`` uses ``lambda_max * lambda_decay ** (e + 1)``.
        lambda_decay: Per-epoch decay of the LOBSTER strength.
        tolerance: Admissible increase of the validation margin loss when pruning (the paper: 0).
        search_steps: Bisection steps of the threshold search.
        min_val_acc: Prune only once the validation accuracy exceeds this (affNIST: 0.5).
        prune: Run the threshold search (False: LOBSTER only).
        prune_epochs: Epochs with LOBSTER and threshold search (None: all). Later epochs fine-tune the surviving
            weights with the masks frozen and no LOBSTER, so the last epochs only recover accuracy.
        target_sparsity: Also end the pruning phase once the global weight sparsity reaches this (None: never).
        finetune_lr_factor: The optimizer's learning rate is multiplied by this once, when fine-tuning starts
            (the lr scheduler's per-epoch decay continues from there).
        finetune_lobster: Keep LOBSTER (with its decayed strength) on during fine-tuning. LOBSTER shrinks every
            weight whose loss sensitivity is small, which keeps the routing logits, and so the couplings' spread,
            small; switching it off lets the surviving weights grow back.
    """

    def __init__(
        self,
        lambda_max: float = 1e-4,
        lambda_decay: float = 0.99,
        tolerance: float = 0.0,
        search_steps: int = 12,
        min_val_acc: float = 0.0,
        prune: bool = True,
        prune_epochs: int | None = None,
        target_sparsity: float | None = None,
        finetune_lr_factor: float = 1.0,
        finetune_lobster: bool = False,
    ):
        self.lambda_max, self.lambda_decay, self.tolerance = lambda_max, lambda_decay, tolerance
        self.search_steps, self.min_val_acc, self.prune = search_steps, min_val_acc, prune
        self.prune_epochs, self.target_sparsity = prune_epochs, target_sparsity
        self.finetune_lr_factor, self.finetune_lobster = finetune_lr_factor, finetune_lobster
        self._masks: list[torch.Tensor] | None = None
        # First epoch of the fine-tuning phase (None while pruning); checkpointed so a resumed run keeps its phase.
        self.finetune_from: int | None = None

    def state_dict(self) -> dict:
        return {"finetune_from": self.finetune_from}

    def load_state_dict(self, state_dict: dict) -> None:
        self.finetune_from = state_dict.get("finetune_from")

    def finetuning(self, epoch: int) -> bool:
        """Whether ``epoch`` belongs to the fine-tuning phase (masks frozen, no LOBSTER, no threshold search)."""
        return self.finetune_from is not None and epoch >= self.finetune_from

    def _lambda(self, epoch: int) -> float:
        if self.finetuning(epoch) and not self.finetune_lobster:
            return 0.0
        return self.lambda_max * self.lambda_decay ** (epoch + 1)

    @staticmethod
    def _net(pl_module: pl.LightningModule) -> torch.nn.Module:
        return getattr(pl_module, "net", pl_module)

    def _params(self, pl_module: pl.LightningModule) -> list[torch.nn.Parameter]:
        return [p for _, p in _pruning_parameters(self._net(pl_module))]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.finetune_from is None and self.prune_epochs is not None and epoch >= self.prune_epochs:
            self.finetune_from = epoch
        if self.finetune_from == epoch and self.finetune_lr_factor != 1.0:
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] *= self.finetune_lr_factor
        self._masks = nonzero_masks(self._params(pl_module))

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        lobster_(self._params(pl_module), self._lambda(trainer.current_epoch))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        if self._masks is not None:
            apply_masks_(self._params(pl_module), self._masks)

    @torch.no_grad()
    def _val_margin_loss(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        """Margin loss over the validation batches (every DDP rank sees all of them, so all pick one threshold)."""
        net = self._net(pl_module)
        total, n = 0.0, 0
        dm = trainer.datamodule
        prepare = getattr(dm, "prepare_batch", None)
        limit = trainer.num_val_batches[0] if trainer.num_val_batches else float("inf")
        for k, (x, y) in enumerate(dm.val_dataloader()):
            if k >= limit:  # the batches Lightning validates on (limit_val_batches)
                break
            x, y = x.to(pl_module.device), y.to(pl_module.device)
            if prepare is not None:
                x = prepare(x, train=False)
            total += float(margin_loss(net(x).lengths, y)) * len(y)
            n += len(y)
        return total / max(n, 1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = self._net(pl_module)
        named = _pruning_parameters(net)
        threshold = 0.0
        val_acc = trainer.callback_metrics.get("val/acc")
        searching = self.prune and not self.finetuning(trainer.current_epoch)
        if searching and (val_acc is None or float(val_acc) > self.min_val_acc):
            was_training = net.training
            net.eval()
            targets = threshold_targets(named)
            threshold, _ = search_threshold(
                targets, lambda: self._val_margin_loss(trainer, pl_module), self.tolerance, self.search_steps
            )
            prune_below_(targets, threshold)
            net.train(was_training)
        self._masks = nonzero_masks([p for _, p in named])
        stats = sparsity((n, p) for n, p in named if n.rsplit(".", 1)[-1] == "weight")
        reached = self.target_sparsity is not None and stats["global"] >= self.target_sparsity
        if self.finetune_from is None and reached:
            self.finetune_from = trainer.current_epoch + 1
        pl_module.log("rem/threshold", threshold)
        pl_module.log("rem/lambda", self._lambda(trainer.current_epoch))
        pl_module.log("rem/sparsity", stats["global"])
        for name, value in stats.items():
            if name != "global":
                pl_module.log(f"rem/sparsity/{name}", value)
