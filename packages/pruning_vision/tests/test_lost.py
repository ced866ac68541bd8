import numpy as np
import pytest
import torch
from pruning_vision.lost import connected_component, lost, patch_boxes_to_pixels
from scipy import ndimage


def test_lost_finds_a_planted_object():
    g = torch.Generator().manual_seed(0)
    h, w, d = 8, 10, 16
    background, obj = torch.randn(d, generator=g), torch.randn(d, generator=g)
    obj = obj - (obj @ background) / (background @ background) * background - 0.5 * background  # anti-correlated
    feats = background.repeat(h, w, 1) + 0.05 * torch.randn(h, w, d, generator=g)
    feats[2:5, 6:8] = obj + 0.05 * torch.randn(3, 2, d, generator=g)  # rows 2-4, cols 6-7
    boxes, seed, comp = lost(feats.view(1, h * w, d), (h, w), k=6)
    assert boxes[0].tolist() == [6, 2, 8, 5]
    r, c = divmod(int(seed[0]), w)
    assert 2 <= r <= 4 and 6 <= c <= 7
    assert int(comp.sum()) == 6
    assert patch_boxes_to_pixels(boxes, (h, w), (32, 40))[0].tolist() == [24.0, 8.0, 32.0, 20.0]


def test_lost_keeps_only_the_seed_component():
    g = torch.Generator().manual_seed(1)
    h, w, d = 8, 8, 8
    background = torch.randn(d, generator=g)
    obj = -background + 0.1 * torch.randn(d, generator=g)
    feats = background.repeat(h, w, 1)
    feats[1:3, 1:3] = obj  # 4 patches
    feats[6, 6] = obj * 1.01  # an isolated look-alike patch
    boxes, seed, comp = lost(feats.view(1, h * w, d), (h, w), k=5)
    # All five object-like patches have degree 5; the lowest index, (1, 1), is the seed. The look-alike at (6, 6)
    # correlates with the seeds too but is not connected to them, so it stays out of the box.
    assert int(seed[0]) == 1 * w + 1
    assert boxes[0].tolist() == [1, 1, 3, 3]
    assert not bool(comp[0, 6, 6]) and int(comp.sum()) == 4


def test_centering_makes_lost_work_on_non_negative_features():
    g = torch.Generator().manual_seed(2)
    h, w, d = 6, 6, 12
    feats = torch.zeros(h, w, d)
    feats[..., :6] = 1.0 + 0.05 * torch.rand(h, w, 6, generator=g)  # background channels (post-ReLU: >= 0)
    feats[3:5, 0:3, :6] = 0.2  # weak background response: all raw dot products stay positive
    feats[3:5, 0:3, 6:] = 1.0  # object patches use other channels
    flat = feats.view(1, h * w, d)
    raw_boxes, _, _ = lost(flat, (h, w), k=4, center=False)
    assert raw_boxes[0].tolist() == [0, 0, 6, 6]  # every dot product >= 0: the whole image
    boxes, _, _ = lost(flat, (h, w), k=4)
    assert boxes[0].tolist() == [0, 3, 3, 5]


@pytest.mark.parametrize("seed", range(5))
def test_connected_component_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((3, 9, 7)) > 0.45
    seeds = torch.tensor([rng.integers(63) for _ in range(3)])
    got = connected_component(torch.from_numpy(mask), seeds)
    for b in range(3):
        m = mask[b].copy()
        r, c = divmod(int(seeds[b]), 7)
        m[r, c] = True
        labels, _ = ndimage.label(m)  # default structure: 4-connectivity
        assert np.array_equal(got[b].numpy(), labels == labels[r, c])
