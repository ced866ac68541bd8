"""The REMPruning callback's phases: pruning (LOBSTER + threshold search), then fine-tuning with frozen masks."""

from types import SimpleNamespace

import pytest
import torch
from capsnet_rem.callbacks import REMPruning
from torch import nn


class _Net(nn.Module):
    """A linear 'capsule length' model: enough for the margin loss the threshold search evaluates."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return SimpleNamespace(lengths=torch.sigmoid(self.fc(x)))


class _Module:
    """Stands in for the LightningModule: holds ``net`` and records what the callback logs."""

    def __init__(self):
        torch.manual_seed(0)
        self.net, self.device, self.logged = _Net(), torch.device("cpu"), {}

    def log(self, name, value):
        self.logged[name] = value


def _trainer(module, epoch, opt):
    x, y = torch.randn(16, 4, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 3
    dm = SimpleNamespace(val_dataloader=lambda: [(x, y)])
    return SimpleNamespace(
        current_epoch=epoch, optimizers=[opt], callback_metrics={}, datamodule=dm, num_val_batches=[1]
    )


def _epoch(cb, module, opt, epoch):
    """One epoch of one step in the order Lightning calls the hooks; the gradient is zero (LOBSTER at full strength)."""
    trainer = _trainer(module, epoch, opt)
    cb.on_train_epoch_start(trainer, module)
    for p in module.net.parameters():
        p.grad = torch.zeros_like(p)
    before = module.net.fc.weight.detach().clone()
    cb.on_before_optimizer_step(trainer, module, opt)
    after_lobster = module.net.fc.weight.detach().clone()
    with torch.no_grad():
        module.net.fc.weight.add_(1.0)  # an "optimizer step" that would revive pruned weights
    cb.on_train_batch_end(trainer, module)
    after_masks = module.net.fc.weight.detach().clone()
    cb.on_train_epoch_end(trainer, module)
    return before, after_lobster, after_masks


def test_pruning_phase_then_finetuning_with_frozen_masks_and_scaled_lr():
    module = _Module()
    opt = torch.optim.SGD(module.net.parameters(), lr=1.0)
    # Any loss is admissible (huge tolerance), so the search prunes all but the largest weight.
    cb = REMPruning(
        lambda_max=0.5, lambda_decay=1.0, tolerance=1e9, search_steps=20, prune_epochs=1, finetune_lr_factor=0.1
    )
    before, after_lobster, _ = _epoch(cb, module, opt, 0)
    torch.testing.assert_close(after_lobster, before * 0.5)  # p - 0.5 * p * relu(1 - 0)
    assert opt.param_groups[0]["lr"] == 1.0 and not cb.finetuning(0)
    w = module.net.fc.weight.detach()
    assert int((w != 0).sum()) == 1 and module.logged["rem/sparsity"] == pytest.approx(11 / 12)
    zeros = w == 0

    before, after_lobster, after_masks = _epoch(cb, module, opt, 1)
    assert cb.finetuning(1) and cb.finetune_from == 1
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # scaled once, when fine-tuning starts
    torch.testing.assert_close(after_lobster, before)  # no LOBSTER while fine-tuning
    assert after_masks[zeros].eq(0).all() and after_masks[~zeros].ne(0).all()  # masks frozen
    # no threshold search: the surviving weight (now +1) is kept although any loss would be admissible
    assert module.net.fc.weight.detach()[~zeros].ne(0).all()
    assert module.logged["rem/threshold"] == 0.0 and module.logged["rem/lambda"] == 0.0
    _epoch(cb, module, opt, 2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # not scaled again


@pytest.mark.parametrize(("target", "finetune_from"), [(0.5, 1), (0.99, None)])
def test_target_sparsity_ends_the_pruning_phase(target, finetune_from):
    module = _Module()
    opt = torch.optim.SGD(module.net.parameters(), lr=1.0)
    cb = REMPruning(lambda_max=0.0, tolerance=1e9, search_steps=20, target_sparsity=target)
    _epoch(cb, module, opt, 0)  # prunes 11 of 12 weights: 0.917 sparsity
    assert cb.finetune_from == finetune_from
    restored = REMPruning()
    restored.load_state_dict(cb.state_dict())  # the phase survives a checkpoint
    assert restored.finetune_from == finetune_from


def test_finetune_lobster_keeps_the_decayed_shrinkage_but_no_search():
    module = _Module()
    opt = torch.optim.SGD(module.net.parameters(), lr=1.0)
    cb = REMPruning(
        lambda_max=0.5, lambda_decay=0.5, tolerance=1e9, search_steps=20, prune_epochs=1, finetune_lobster=True
    )
    _epoch(cb, module, opt, 0)  # prunes 11 of 12 weights
    zeros = module.net.fc.weight.detach() == 0
    before, after_lobster, after_masks = _epoch(cb, module, opt, 1)
    assert cb.finetuning(1)
    torch.testing.assert_close(after_lobster, before * (1 - 0.5 * 0.5**2))  # lambda of epoch 1: 0.5 * 0.5^(1+1)
    assert module.logged["rem/lambda"] == pytest.approx(0.125) and module.logged["rem/threshold"] == 0.0
    assert after_masks[zeros].eq(0).all() and after_masks[~zeros].ne(0).all()  # masks still frozen
