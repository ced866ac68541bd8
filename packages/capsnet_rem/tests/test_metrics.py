"""Parse trees and entropies on constructed coupling coefficients with known answers."""

import math

import torch
from capsnet_rem.metrics import ParseTrees, entropy_bits


def h(*p):
    return -sum(x * math.log2(x) for x in p if x > 0)


def test_entropy_bits():
    torch.testing.assert_close(entropy_bits(torch.tensor([2, 1, 1])), torch.tensor(1.5, dtype=torch.float64))
    torch.testing.assert_close(entropy_bits(torch.tensor([5, 0])), torch.tensor(0.0, dtype=torch.float64))


def test_parse_trees_known_answer():
    # 3 primary capsules, 3 classes; c toward the predicted class is what matters.
    toward = torch.tensor(
        [
            [0.01, 0.98, 0.52],  # class 0, key (0, 10, 5)
            [0.04, 0.96, 0.48],  # class 0, key (0, 10, 5)
            [0.06, 0.93, 0.50],  # class 0, key (1, 9, 5)
            [0.30, 0.30, 0.30],  # class 2, key (3, 3, 3)
        ]
    )
    preds = torch.tensor([0, 0, 0, 2])
    coupling = torch.full((4, 3, 3), 0.77)  # other classes' couplings must be ignored
    coupling[torch.arange(4), :, preds] = toward
    metric = ParseTrees(num_classes=3, bins=11)
    metric.update(coupling[:2], preds[:2])
    metric.update(coupling[2:], preds[2:])
    out = metric.compute()
    assert out["trees"][0] == 2 and out["trees"][2] == 1 and out["trees"][1].isnan()
    torch.testing.assert_close(out["entropy"][0].item(), h(2 / 3, 1 / 3))
    assert out["entropy"][2] == 0
    # per-coefficient entropy of class 0: capsules 0 and 1 split 2:1, capsule 2 never changes bin
    torch.testing.assert_close(out["coef_entropy"][0].item(), (2 * h(2 / 3, 1 / 3) + 0) / 3)
    torch.testing.assert_close(out["trees_mean"].item(), 1.5)
    torch.testing.assert_close(out["entropy_mean"].item(), h(2 / 3, 1 / 3) / 2)
    assert out["count"].tolist() == [3, 0, 1]
