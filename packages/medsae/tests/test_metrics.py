import math

import numpy as np
import pytest
import torch
from medsae.metrics import (
    L0,
    DeadLatents,
    FractionVarianceUnexplained,
    LabelCorrelation,
    Monosemanticity,
    firing,
    firing_scores,
    label_entropy,
    monosemanticity,
    monosemanticity_pairwise,
    pearson,
    per_class_top,
    rank_normalised,
)


def _random(n=40, k=7, d=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.relu(torch.randn(n, k, generator=gen, dtype=torch.float64))
    e = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return a, e


def _ms_loop(a, e):
    """The definition, literally: min-max scale, then the double loop over pairs i < j."""
    n, k = a.shape
    out = []
    for unit in range(k):
        col = a[:, unit].tolist()
        lo, hi = min(col), max(col)
        if hi == lo:
            out.append(math.nan)
            continue
        s = [(v - lo) / (hi - lo) for v in col]
        num = den = 0.0
        for i in range(n):
            for j in range(i + 1, n):
                w = s[i] * s[j]
                cos = float(e[i] @ e[j] / (e[i].norm() * e[j].norm()))
                num += w * cos
                den += w
        out.append(num / den if den > 0 else math.nan)
    return torch.tensor(out, dtype=torch.float64)


def test_monosemanticity_equals_the_pairwise_definition():
    a, e = _random()
    a[:, 3] = 0.0  # a dead unit: undefined
    a[:, 4] = -a[:, 4] - 1  # negative activations (raw embedding dimensions) are fine after min-max scaling
    ref = _ms_loop(a, e)
    fast = monosemanticity(a, e)
    assert torch.isnan(fast[3]) and torch.isnan(ref[3])
    ok = ~ref.isnan()
    assert torch.allclose(fast[ok], ref[ok], atol=1e-12)
    assert torch.allclose(monosemanticity_pairwise(a, e)[ok], ref[ok], atol=1e-12)


def test_monosemanticity_of_units_firing_on_one_cluster_is_high():
    gen = torch.Generator().manual_seed(1)
    centres = torch.eye(4, dtype=torch.float64)
    cluster = torch.arange(200) % 4
    e = centres[cluster] + 0.05 * torch.randn(200, 4, generator=gen, dtype=torch.float64)
    mono = (cluster == 0).double()[:, None] * torch.rand(200, 1, generator=gen, dtype=torch.float64)
    poly = torch.rand(200, 1, generator=gen, dtype=torch.float64)
    ms = monosemanticity(torch.cat([mono, poly], 1), e)
    assert ms[0] > 0.95 and ms[1] < 0.5


def test_streaming_monosemanticity_matches_full_computation():
    a, e = _random(n=300, k=9, d=6, seed=2)
    a[:, 0] = 3.0  # constant: undefined
    metric = Monosemanticity(9, 6)
    for chunk in range(0, 300, 64):
        metric.update(a[chunk : chunk + 64], e[chunk : chunk + 64])
    streamed, full = metric.compute(), monosemanticity(a, e)
    assert torch.isnan(streamed[0]) and torch.isnan(full[0])
    assert torch.allclose(streamed[1:], full[1:], atol=1e-10)


def test_pearson_matches_numpy_and_streaming():
    gen = torch.Generator().manual_seed(3)
    a = torch.relu(torch.randn(100, 6, generator=gen))
    y = (torch.rand(100, 4, generator=gen) < 0.3).float()
    ref = np.corrcoef(np.concatenate([a.numpy(), y.numpy()], 1).T)[:6, 6:]
    assert np.allclose(pearson(a, y).numpy(), ref, atol=1e-10)
    metric = LabelCorrelation(6, 4)
    for chunk in range(0, 100, 30):
        metric.update(a[chunk : chunk + 30], y[chunk : chunk + 30])
    assert np.allclose(metric.compute().numpy(), ref, atol=1e-8)


def test_firing_top_30_percent_of_positive_values_by_hand():
    a = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [6.0], [7.0], [8.0], [9.0], [10.0], [0.0]])
    # 10 positive values: top 30% = the 3 largest (8, 9, 10)
    assert firing(a)[:, 0].nonzero().flatten().tolist() == [8, 9, 10]
    b = torch.tensor([[0.0], [0.0], [2.0], [1.0]])  # 2 positives: ceil(0.6) = 1 -> only the largest
    assert firing(b)[:, 0].tolist() == [False, False, True, False]


def test_firing_scores_against_a_loop():
    gen = torch.Generator().manual_seed(4)
    a = torch.relu(torch.randn(60, 5, generator=gen))
    a[:, 4] = 0.0
    y = (torch.rand(60, 3, generator=gen) < 0.4).float()
    out = firing_scores(a, y, l0_min=15, l0_max=300)
    fire = firing(a)
    for k in range(4):
        for c in range(3):
            hits = [(bool(fire[i, k]), bool(y[i, c])) for i in range(60)]
            both = sum(f and t for f, t in hits)
            p = both / sum(f for f, _ in hits)
            r = both / sum(t for _, t in hits)
            assert out["precision"][k, c].item() == pytest.approx(p)
            assert out["recall"][k, c].item() == pytest.approx(r)
            assert out["f1"][k, c].item() == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)
    l0 = (a > 0).sum(0)
    assert out["keep"].tolist() == ((l0 > 15) & (l0 < 300)).tolist()
    assert not out["keep"][4]


def test_label_entropy_and_alive_rule_by_hand():
    corr = torch.tensor([[0.5, -0.5, 0.0, 0.0], [0.3, 0.0, 0.0, 0.0], [0.1, 0.1, 0.1, 0.1], [0.0, 0.0, 0.0, 0.0]])
    h, alive = label_entropy(corr)
    assert h[0].item() == pytest.approx(math.log(2))
    assert h[1].item() == pytest.approx(0.0)
    assert h[2].item() == pytest.approx(math.log(4))
    assert torch.isnan(h[3])
    assert alive.tolist() == [True, True, False, False]


def test_per_class_top_and_rank_normalisation_by_hand():
    corr = torch.tensor([[0.9, 0.1], [0.2, -0.6], [0.3, 0.5]])
    h = torch.tensor([0.1, 0.2, 0.3])
    top = per_class_top(corr, h)
    assert top["unit"].tolist() == [0, 1]
    assert torch.allclose(top["corr"], torch.tensor([0.9, 0.6], dtype=torch.float64))
    assert torch.allclose(top["entropy"], torch.tensor([0.1, 0.2]))
    ranks = rank_normalised(
        {"a": torch.tensor([3.0, 1.0]), "b": torch.tensor([2.0, 2.0]), "c": torch.tensor([1.0, 2.0])}
    )
    # class 0: a best (1), b middle (0.5), c worst (0); class 1: b and c tie for best (0.75 each), a worst (0)
    assert ranks == pytest.approx({"a": 0.5, "b": 0.625, "c": 0.375})
    assert rank_normalised({"a": torch.tensor([1.0]), "b": torch.tensor([2.0])}, higher_is_better=False) == {
        "a": 1.0,
        "b": 0.0,
    }


def test_standard_sae_metrics_against_direct_formulas():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(50, 4, generator=gen)
    x_hat = x + 0.3 * torch.randn(50, 4, generator=gen)
    f = torch.relu(torch.randn(50, 10, generator=gen))
    f[:, 7] = 0
    l0, fvu, dead = L0(), FractionVarianceUnexplained(4), DeadLatents(10)
    for s in range(0, 50, 20):
        l0.update(f[s : s + 20])
        fvu.update(x[s : s + 20], x_hat[s : s + 20])
        dead.update(f[s : s + 20])
    assert l0.compute().item() == pytest.approx((f > 0).sum().item() / 50)
    want = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert fvu.compute().item() == pytest.approx(want.item(), rel=1e-6)
    assert dead.compute().item() == pytest.approx(0.1)
