import pytest
import torch
from pruning_vision.metrics import (
    CorLoc,
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
    box_iou,
    minmax,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)


def test_rma_hand_worked():
    heat = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    mask = torch.tensor([[[1, 0], [0, 1]]])
    # raw: (1 + 4) / (1 + 2 + 3 + 4)
    assert relevance_mass_accuracy(heat, mask).item() == pytest.approx(0.5)
    # min-max normalised to [0, 1/3, 2/3, 1]: (0 + 1) / 2
    m = RelevanceMassAccuracy(normalize=True)
    m.update(heat, mask)
    assert m.compute().item() == pytest.approx(0.5)
    # negative relevance does not count: [-5, 1; 1, 2] -> positive mass 4, inside 2
    heat2 = torch.tensor([[[-5.0, 1.0], [1.0, 2.0]]])
    assert relevance_mass_accuracy(heat2, mask).item() == pytest.approx(2 / 4)
    # after min-max: [0, 6/7, 6/7, 1] -> inside 1 of 19/7
    m = RelevanceMassAccuracy()
    m.update(heat2, mask)
    assert m.compute().item() == pytest.approx(7 / 19)


def test_rra_hand_worked():
    heat = torch.tensor([[[4.0, 1.0], [3.0, 2.0]]])
    mask = torch.tensor([[[1, 0], [0, 1]]])  # K = 2; top-2 pixels are 4 (inside) and 3 (outside)
    assert relevance_rank_accuracy(heat, mask).item() == pytest.approx(0.5)
    assert relevance_rank_accuracy(torch.tensor([[[4.0, 1.0], [0.0, 5.0]]]), mask).item() == 1.0


def test_rma_rra_against_float64_loops():
    g = torch.Generator().manual_seed(0)
    heat = torch.randn(5, 7, 6, generator=g)
    mask = torch.rand(5, 7, 6, generator=g) > 0.6
    for b in range(5):
        h = heat[b].double().flatten().tolist()
        m = mask[b].flatten().tolist()
        pos = [max(v, 0.0) for v in h]
        rma = sum(p for p, inside in zip(pos, m) if inside) / sum(pos)
        k = sum(m)
        top = sorted(range(len(h)), key=lambda i: -h[i])[:k]
        rra = sum(m[i] for i in top) / k
        assert relevance_mass_accuracy(heat[b : b + 1], mask[b : b + 1]).item() == pytest.approx(rma, rel=1e-5)
        assert relevance_rank_accuracy(heat[b : b + 1], mask[b : b + 1]).item() == pytest.approx(rra)


def test_metric_objects_average_over_batches():
    g = torch.Generator().manual_seed(1)
    heat, mask = torch.rand(6, 5, 5, generator=g), torch.rand(6, 5, 5, generator=g) > 0.5
    rma, rra = RelevanceMassAccuracy(), RelevanceRankAccuracy()
    for chunk in (slice(0, 2), slice(2, 6)):
        rma.update(heat[chunk], mask[chunk])
        rra.update(heat[chunk], mask[chunk])
    assert rma.compute().item() == pytest.approx(relevance_mass_accuracy(minmax(heat), mask).mean().item(), rel=1e-6)
    assert rra.compute().item() == pytest.approx(relevance_rank_accuracy(heat, mask).mean().item(), rel=1e-6)


def test_box_iou_and_corloc():
    a = torch.tensor([0.0, 0.0, 4.0, 4.0])
    b = torch.tensor([2.0, 0.0, 6.0, 4.0])  # overlap 2x4 = 8, union 24
    assert box_iou(a, b).item() == pytest.approx(8 / 24)
    pad = torch.tensor([-1.0, -1.0, -1.0, -1.0])
    gt = torch.stack([torch.stack([b, pad]), torch.stack([pad, a]), torch.stack([b, pad])])  # [3, 2, 4]
    pred = torch.stack([a, a, torch.tensor([2.0, 0.0, 5.0, 4.0])])  # IoU 1/3, 1 (second gt row), 12/16
    c = CorLoc()
    c.update(pred, gt)
    assert c.compute().item() == pytest.approx(2 / 3)
