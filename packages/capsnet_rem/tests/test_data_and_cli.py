"""Augmentation is a translation per sample and reproducible; the CPU config runs through the real CLI with REM."""

from pathlib import Path

import torch
from capsnet_rem.data import augment
from reprokit.cli import run_cli

CONTRACT = Path(__file__).resolve().parents[1] / "configs" / "cpu" / "contract.yaml"


def test_shift_translates_each_image_and_is_reproducible():
    x = torch.rand(6, 1, 9, 9)
    out = augment(x, torch.Generator().manual_seed(3), shift=2, hflip=False, jitter=0.0)
    again = augment(x, torch.Generator().manual_seed(3), shift=2, hflip=False, jitter=0.0)
    assert torch.equal(out, again)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(6):
        crops = [padded[b, :, dy : dy + 9, dx : dx + 9] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[b], c) for c in crops)
    assert not torch.equal(out, x)  # 6 samples all drawing the zero shift would be a 1 in 25**6 event


def test_flip_and_no_augmentation():
    x = torch.rand(64, 3, 5, 5)
    out = augment(x, torch.Generator().manual_seed(0), shift=0, hflip=True, jitter=0.0)
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and 10 < sum(flipped) < 54
    assert torch.equal(augment(x, torch.Generator(), shift=0, hflip=False, jitter=0.0), x)


def test_rem_config_through_cli_prunes_and_reports_parse_trees():
    args = [
        "--config",
        str(CONTRACT),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=4",
        "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks.init_args.tolerance=100.0",
    ]
    fit = run_cli("capsnet_rem", ["fit", *args])
    metrics = fit.trainer.callback_metrics
    assert 0.5 < float(metrics["rem/sparsity"]) < 1  # any loss is admissible: the search prunes most weights
    net = fit.model.net
    zeros = sum(int((p == 0).sum()) for n, p in net.named_parameters() if n.endswith("weight") and "decoder" not in n)
    total = sum(p.numel() for n, p in net.named_parameters() if n.endswith("weight") and "decoder" not in n)
    assert abs(zeros / total - float(metrics["rem/sparsity"])) < 1e-6
    ckpt = fit.trainer.checkpoint_callback.best_model_path
    test = run_cli("capsnet_rem", ["test", *args, "--ckpt_path", ckpt]).trainer.callback_metrics
    for key in ("test/acc", "test/trees_mean", "test/entropy_mean", "test/sparsity", "test/primary_capsules"):
        assert torch.isfinite(test[key]), key
    assert float(test["test/sparsity"]) == float(metrics["rem/sparsity"])
    assert 1 <= float(test["test/trees_mean"]) <= 250
