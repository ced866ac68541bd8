import numpy as np
import torch
from corsa.data import OFFLINE_MAJORITY, CXRDataset, offline_covid
from corsa.metrics import ScreeningMetrics, bootstrap_ci, grouped_metrics, screening_metrics
from sklearn.metrics import balanced_accuracy_score, roc_auc_score


def test_screening_metrics_match_sklearn():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (200,), generator=g)
    prob = (0.3 * y + 0.7 * torch.rand(200, generator=g)).clamp(0, 1)
    m = screening_metrics(prob, y)
    pred = (prob >= 0.5).long().numpy()
    assert abs(m["bacc"] - balanced_accuracy_score(y.numpy(), pred)) < 1e-6
    assert abs(m["auc"] - roc_auc_score(y.numpy(), prob.numpy())) < 1e-6
    tp = ((pred == 1) & (y.numpy() == 1)).sum()
    assert abs(m["sens"] - tp / (y == 1).sum().item()) < 1e-6
    lo, hi = bootstrap_ci(prob, y, "auc", n=200)
    assert lo < m["auc"] < hi


def test_aligned_and_conflicting_accuracy_by_hand():
    # Group 0's training majority is label 1, group 1's is label 0.
    y = torch.tensor([1, 0, 1, 0, 0, 1])
    g = torch.tensor([0, 0, 1, 1, 1, 0])
    prob = torch.tensor([0.9, 0.8, 0.2, 0.1, 0.6, 0.7])  # correct: T F F T F T
    m = grouped_metrics(prob, y, g, ("a", "b"), majority_label=(1, 0))
    # aligned: idx 0, 5 (group 0, y=1) and 3, 4 (group 1, y=0) -> correct 0, 5, 3 of 4
    assert m["aligned/acc"] == 0.75 and m["conflicting/acc"] == 0.0
    metric = ScreeningMetrics(("a", "b"), (1, 0))
    metric.update(prob[:3], y[:3], g[:3])
    metric.update(prob[3:], y[3:], g[3:])
    assert metric.compute()["aligned/acc"] == 0.75


def test_offline_covid_bias_is_spurious_in_the_pool_only():
    _, y, h, patient = offline_covid(300, 0, 32, 0.45, 0.9, False)
    _, ty, th, tpatient = offline_covid(300, 0, 32, 0.45, 0.9, True)
    majority = torch.tensor(OFFLINE_MAJORITY)
    assert 0.85 < (majority[h] == y).float().mean() < 0.95
    assert 0.35 < (majority[th] == ty).float().mean() < 0.65
    assert not set(patient.tolist()) & set(tpatient.tolist())


def test_augmentation_is_seeded_by_epoch_and_index():
    images = torch.rand(4, 1, 16, 16)
    ds = CXRDataset(images.__getitem__, torch.zeros(4), augment={"shift": 0.1, "rotate_deg": 20.0}, seed=3)

    class Epoch:
        epoch = 0

    sampler = Epoch()
    ds.follow(sampler)
    a, b = ds[2][0], ds[2][0]
    sampler.epoch = 1
    c = ds[2][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not np.allclose(ds[1][0].numpy(), ((images[1] - 0.5024) / 0.2898).numpy())
