from pathlib import Path

import pytest
import torch
from reprokit.data import (
    DatasetNotFoundError,
    SeededRandomSampler,
    load_mnist5k,
    load_sklearn_digits,
    make_loader,
    offline_splits,
    require_dataset,
    split_indices,
    stratified_split_indices,
)


def test_split_indices_disjoint_covering_deterministic():
    a = split_indices(103, (0.7, 0.1, 0.2), seed=3)
    b = split_indices(103, (0.7, 0.1, 0.2), seed=3)
    assert [len(x) for x in a] == [72, 10, 21]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert sorted(torch.cat(a).tolist()) == list(range(103))
    c = split_indices(103, (0.7, 0.1, 0.2), seed=4)
    assert not torch.equal(a[0], c[0])


def test_split_indices_counts_and_errors():
    parts = split_indices(10, (3, 2), seed=0)
    assert [len(p) for p in parts] == [3, 2]
    assert not set(parts[0].tolist()) & set(parts[1].tolist())
    with pytest.raises(ValueError):
        split_indices(10, (8, 5), seed=0)


def test_stratified_split_keeps_class_shares():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    train, test = stratified_split_indices(labels, (0.8, 0.2), seed=1)
    assert torch.bincount(labels[test]).tolist() == [10, 6, 4]
    assert torch.bincount(labels[train]).tolist() == [40, 24, 16]


def test_seeded_sampler_depends_only_on_seed_and_epoch():
    s1, s2 = SeededRandomSampler(50, seed=7), SeededRandomSampler(50, seed=7)
    torch.manual_seed(0)
    first = list(s1)
    torch.manual_seed(123)  # the global RNG must not matter
    assert list(s2) == first
    s1.set_epoch(1)
    assert list(s1) != first and sorted(s1) == list(range(50))


def test_make_loader_order_is_reproducible():
    data = torch.utils.data.TensorDataset(torch.arange(20))
    order = [torch.cat([b[0] for b in make_loader(data, 4, shuffle=True, seed=5)]) for _ in range(2)]
    assert torch.equal(order[0], order[1]) and not torch.equal(order[0], torch.arange(20))


def test_require_dataset_message(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError) as err:
        require_dataset(tmp_path / "nope", "CheXpert", "register at stanfordmlgroup.github.io", ["train.csv"])
    msg = str(err.value)
    assert "CheXpert" in msg and "nope" in msg and "train.csv" in msg and "register" in msg
    (tmp_path / "ok").mkdir()
    with pytest.raises(DatasetNotFoundError):
        require_dataset(tmp_path / "ok", "X", "y", ["train.csv"])
    (tmp_path / "ok" / "train.csv").write_text("a")
    assert require_dataset(tmp_path / "ok", "X", "y", ["train.csv"]) == tmp_path / "ok"


def test_offline_datasets_are_real_digits():
    x, y = load_mnist5k()
    assert x.shape == (5000, 1, 28, 28) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1 and torch.bincount(y).tolist() == [500] * 10
    d, t = load_sklearn_digits()
    assert d.shape == (1797, 1, 8, 8) and int(t.max()) == 9
    train, val, test = offline_splits("digits", (0.6, 0.2, 0.2), seed=0)
    assert len(train) + len(val) + len(test) == 1797
    with pytest.raises(ValueError, match="unknown offline dataset"):
        offline_splits("imagenet")


def test_split_loaders_mixin_reads_hparams():
    import pytorch_lightning as pl
    from reprokit.data import SplitLoadersMixin

    class DM(SplitLoadersMixin, pl.LightningDataModule):
        def __init__(self, batch_size=4, eval_batch_size=10, split_seed=3):
            super().__init__()
            self.save_hyperparameters()
            self.train_set = self.val_set = self.test_set = torch.utils.data.TensorDataset(torch.arange(20))

    dm = DM()
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.batch_size == 4 and val.batch_size == 10
    assert torch.equal(torch.cat([b[0] for b in val]), torch.arange(20))
    expected = torch.cat([b[0] for b in make_loader(dm.train_set, 4, shuffle=True, seed=3)])
    assert torch.equal(torch.cat([b[0] for b in train]), expected)
