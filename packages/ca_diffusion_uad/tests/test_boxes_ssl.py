import math

import pytest
import torch
from ca_diffusion_uad.boxes import accuracy_at_iou, box_iou, components_to_boxes
from ca_diffusion_uad.metrics import detection_scores
from ca_diffusion_uad.ssl import eps_infonce, masked_l2, random_patch_mask


def test_components_to_boxes_and_iou_hand_case():
    m = torch.zeros(10, 10)
    m[1:3, 2:5] = 1  # rows 1-2, cols 2-4
    m[6:9, 6:7] = 1
    scores = torch.arange(100.0).view(10, 10)
    boxes, s = components_to_boxes(m > 0, scores)
    assert boxes.tolist() == [[2, 1, 5, 3], [6, 6, 7, 9]]
    assert s.tolist() == [24.0, 86.0]
    iou = box_iou(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 1, 3, 3], [0, 0, 2, 2]]))
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 1.0]]))


def test_accuracy_at_iou_counts_images_with_a_hit():
    p = [torch.tensor([[0.0, 0, 4, 4]]), torch.zeros(0, 4), torch.tensor([[0.0, 0, 1, 1]]), torch.zeros(0, 4)]
    t = [
        torch.tensor([[0.0, 0, 4, 5]]),
        torch.tensor([[0.0, 0, 1, 1]]),
        torch.tensor([[5.0, 5, 6, 6]]),
        torch.zeros(0, 4),
    ]
    assert accuracy_at_iou(p, t, 0.5) == pytest.approx(1 / 3)


def test_detection_scores_perfect_and_empty_maps():
    les = torch.zeros(2, 16, 16)
    les[0, 2:6, 2:6] = 1
    les[1, 8:12, 3:9] = 1
    perfect = detection_scores(les.float(), les, 0.5)
    assert perfect["map"] == pytest.approx(1.0) and perfect["map_30"] == pytest.approx(1.0)
    assert perfect["acc_50"] == 1.0
    empty = detection_scores(torch.zeros(2, 16, 16), les, 0.5)
    assert empty["map_50"] == 0.0 and empty["acc_50"] == 0.0


def test_patch_mask_hides_the_requested_share_of_patches():
    keep = random_patch_mask(5, (16, 24), 4, 0.65, torch.Generator().manual_seed(0))
    patches = keep[:, 0, ::4, ::4]
    assert patches.shape == (5, 4, 6)
    assert ((1 - patches).flatten(1).sum(1) == round(0.65 * 24)).all()
    assert torch.equal(keep, keep[:, :, ::4, ::4].repeat_interleave(4, 2).repeat_interleave(4, 3))


def test_masked_l2_ignores_visible_pixels():
    pred, target = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    keep = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert float(masked_l2(pred, target, keep)) == pytest.approx((4 + 16) / 2)


def eps_infonce_loop(a, b, tau, eps):
    z = torch.nn.functional.normalize(torch.cat([a, b]).double(), dim=1)
    n = len(a)
    total = 0.0
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        s_pos = float(z[i] @ z[p])
        denom = math.exp((s_pos - eps) / tau)
        for j in range(2 * n):
            if j not in (i, p):
                denom += math.exp(float(z[i] @ z[j]) / tau)
        total += -math.log(math.exp(s_pos / tau) / denom)
    return total / (2 * n)


def test_eps_infonce_against_float64_loop():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    for tau, eps in ((0.07, 0.5), (0.5, 0.0), (1.0, 0.2)):
        assert float(eps_infonce(a, b, tau, eps)) == pytest.approx(eps_infonce_loop(a, b, tau, eps), rel=1e-9)
    # eps = 0 is NT-Xent: cross-entropy over the other 2N-1 samples with the positive as the target.
    z = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
    logits = (z @ z.T / 0.5).fill_diagonal_(float("-inf"))
    target = (torch.arange(10) + 5) % 10
    nt_xent = torch.nn.functional.cross_entropy(logits, target)
    torch.testing.assert_close(eps_infonce(a, b, 0.5, 0.0), nt_xent)
