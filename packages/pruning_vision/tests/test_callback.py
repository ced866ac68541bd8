import json

import pytorch_lightning as pl
import torch
from pruning_vision.callbacks import IterativePruning
from pruning_vision.data import ObjectsDataModule
from pruning_vision.lightning_module import PrunableClassifier
from pruning_vision.models import SmallViT
from pruning_vision.pruning import keep_count, prunable_layers


def test_round_bookkeeping():
    cb = IterativePruning(rate=0.2, target=0.5, first_round_epochs=3, epochs_per_round=2)
    assert len(cb.ladder) == 5 and cb.total_epochs == 3 + 4 * 2
    assert [cb.round_of(e) for e in range(11)] == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert [(cb.round_start(r), cb.round_end(r)) for r in range(5)] == [(0, 2), (3, 4), (5, 6), (7, 8), (9, 10)]


def test_fit_saves_one_checkpoint_per_round_at_the_scheduled_sparsity(tmp_path):
    torch.manual_seed(0)
    model = PrunableClassifier(
        arch="small_resnet", optimizer="adamw", lr=1e-3, backbone_kwargs={"widths": [4, 8, 8]}, attribution=()
    )
    dm = ObjectsDataModule(n_train=64, n_val=16, n_test=16, batch_size=32)
    cb = IterativePruning(rate=0.2, target=0.4, layer_types=("Conv2d",), rewind=True)
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=cb.total_epochs, callbacks=[cb], default_root_dir=tmp_path,
        logger=pl.loggers.CSVLogger(tmp_path), enable_progress_bar=False, enable_model_summary=False,
        limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, dm)
    rounds = json.loads((tmp_path / "lightning_logs" / "version_0" / "rounds" / "rounds.json").read_text())
    layers = [m for _, m in prunable_layers(model.backbone, ("Conv2d",))]
    n = sum(m.weight_mask.numel() for m in layers)
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    for r, target in zip(rounds, [0.0, 0.2, 0.36, 0.488]):
        assert r["sparsity"] == (n - keep_count(n, target)) / n
        state = torch.load(r["ckpt"], map_location="cpu", weights_only=False)["state_dict"]
        kept = sum(int(v.sum()) for k, v in state.items() if k.endswith("weight_mask") and v.ndim == 4)
        assert kept == keep_count(n, target)


def test_vit_conv_stem_keeps_the_token_grid():
    vit = SmallViT(10, 32, 4, dim=16, depth=1, heads=2, stem="conv")
    feats, grid = vit.patch_features(torch.rand(2, 3, 32, 32))
    assert grid == (8, 8) and feats.shape == (2, 64, 16)
    assert vit.cls_attention(torch.rand(2, 3, 32, 32)).shape == (2, 8, 8)
