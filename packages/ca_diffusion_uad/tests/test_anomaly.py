import numpy as np
import pytest
import torch
from ca_diffusion_uad.anomaly import anomaly_map, best_dice_threshold, dice, erode, median_filter
from ca_diffusion_uad.metrics import VolumeMaps, segmentation_scores
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score


def test_median_filter_matches_scipy_3d_and_2d():
    x = torch.rand(2, 7, 9, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for size in (3, 5):
        ours = median_filter(x, size, dims=3)
        for k in range(2):
            ref = ndimage.median_filter(x[k].numpy(), size=size, mode="nearest")
            np.testing.assert_allclose(ours[k].numpy(), ref)
    ours2 = median_filter(x[0], 3, dims=2)
    ref2 = np.stack([ndimage.median_filter(s, size=3, mode="nearest") for s in x[0].numpy()])
    np.testing.assert_allclose(ours2.numpy(), ref2)


def test_erosion_matches_scipy():
    m = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(1)) > 0.2
    ours = erode(m.float(), 3)
    for k in range(3):
        ref = ndimage.binary_erosion(m[k, 0].numpy(), structure=np.ones((3, 3)), border_value=0)
        np.testing.assert_array_equal(ours[k, 0].numpy().astype(bool), ref)


def test_anomaly_map_finds_a_planted_lesion_and_ignores_noise_and_rim():
    z, h = 7, 24
    brain = torch.zeros(z, 1, h, h)
    brain[..., 2:22, 2:22] = 1
    x_hat = torch.full((z, 1, h, h), 0.5) * brain
    x = x_hat.clone()
    x[1:6, :, 9:15, 9:15] += 0.4  # the lesion the reconstruction does not contain
    x[2, 0, 5, 5] += 0.9  # a single hot voxel: the median filter must remove it
    x[:, :, 2, :] += 0.9  # error on the brain's rim: erosion must remove it
    amap = anomaly_map(x, x_hat, brain, erode_size=3, median_size=3, median_dims=3)
    assert amap[2, 0, 5, 5] == 0 and amap[:, :, 2, :].abs().sum() == 0
    torch.testing.assert_close(amap[2, 0, 11:14, 11:14], torch.full((3, 3), 0.4))
    lesion = torch.zeros_like(x)
    lesion[1:6, :, 9:15, 9:15] = 1
    thr, d = best_dice_threshold(amap, lesion)
    assert d > 0.7 and 0 < thr <= 0.4 + 1e-6


def test_best_dice_threshold_against_brute_force():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        y = torch.rand(300, generator=g) < 0.2
        s = (torch.rand(300, generator=g) + 0.5 * y).round(decimals=2)  # ties on purpose
        thr, d = best_dice_threshold(s, y)
        brute = max((float(dice(s >= c, y)), float(c)) for c in s.unique())
        assert d == pytest.approx(brute[0], abs=1e-6)
        assert float(dice(s >= thr, y)) == pytest.approx(d, abs=1e-6)


def test_dice_hand_case():
    p = torch.tensor([1, 1, 0, 0, 1])
    t = torch.tensor([1, 0, 0, 1, 1])
    assert float(dice(p, t)) == pytest.approx(2 * 2 / (3 + 3))
    assert float(dice(torch.zeros(3), torch.zeros(3))) == 1.0


def test_segmentation_scores_against_sklearn():
    g = torch.Generator().manual_seed(2)
    les = torch.rand(3, 4, 8, 8, generator=g) < 0.15
    maps = torch.rand(3, 4, 8, 8, generator=g) + 0.6 * les
    reg = torch.rand(3, 4, 8, 8, generator=g) < 0.9
    reg |= les
    metric = VolumeMaps()
    for v in range(3):
        metric.update(maps[v].unsqueeze(1), les[v].unsqueeze(1), reg[v].unsqueeze(1))
    m, y, r = metric.compute()
    out = segmentation_scores(m, y, r, threshold=0.8)
    aurocs = [roc_auc_score(y[v][r[v]].numpy(), m[v][r[v]].numpy()) for v in range(3)]
    aps = [average_precision_score(y[v][r[v]].numpy(), m[v][r[v]].numpy()) for v in range(3)]
    dices = [2 * ((m[v] >= 0.8) & y[v]).sum() / ((m[v] >= 0.8).sum() + y[v].sum()) for v in range(3)]
    assert out["auroc"] == pytest.approx(np.mean(aurocs), abs=1e-6)
    assert out["auprc"] == pytest.approx(np.mean(aps), abs=1e-6)
    assert out["dice"] == pytest.approx(float(np.mean(dices)), abs=1e-6)
    assert out["auroc_pooled"] == pytest.approx(roc_auc_score(y[r].numpy(), m[r].numpy()), abs=1e-6)
