"""LOBSTER, the threshold bisection, masks, sparsity and capsule compaction."""

import pytest
import torch
from capsnet_rem.model import alive_primary_capsules, compact
from capsnet_rem.rem import (
    apply_masks_,
    lobster_,
    nonzero_masks,
    prune_below_,
    search_threshold,
    sparsity,
    threshold_targets,
)
from torch import nn


def test_lobster_hand_worked():
    p = nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    p.grad = torch.tensor([0.5, -0.2, 2.0, 0.0])
    lobster_([p], lam=0.1)
    # relu(1 - |g|) = [0.5, 0.8, 0, 1]  ->  p - 0.1 * p * [0.5, 0.8, 0, 1]
    torch.testing.assert_close(p.data, torch.tensor([0.95, -1.84, 0.5, 2.7]))


def test_lobster_skips_parameters_without_gradient():
    p = nn.Parameter(torch.ones(3))
    lobster_([p], lam=0.5)
    assert torch.equal(p.data, torch.ones(3))


def test_bisection_finds_largest_admissible_threshold():
    w1 = torch.tensor([0.1, -0.2, 0.3])
    w2 = torch.tensor([-0.5, 0.8])
    calls = []

    def loss():  # the loss only rises once the -0.5 weight is pruned
        calls.append(1)
        return 0.0 if w2[0] != 0 else 1.0

    threshold, reference = search_threshold([w1, w2], loss, tolerance=0.0, steps=20)
    assert reference == 0.0 and len(calls) == 21
    assert 0.5 - 0.8 / 2**20 <= threshold < 0.5
    assert torch.equal(w1, torch.tensor([0.1, -0.2, 0.3]))  # the search leaves the weights as they were
    prune_below_([w1, w2], threshold)
    assert torch.equal(w1, torch.zeros(3)) and torch.equal(w2, torch.tensor([-0.5, 0.8]))


def test_bisection_tolerance_admits_small_increases():
    w = torch.tensor([0.1, 0.4, 0.9])

    def loss():  # each pruned weight costs its magnitude
        return float((torch.tensor([0.1, 0.4, 0.9]) - w).abs().sum())

    strict, _ = search_threshold([w], loss, tolerance=0.0, steps=30)
    loose, _ = search_threshold([w], loss, tolerance=0.55, steps=30)
    assert 0.1 - 1e-6 <= strict < 0.1  # nothing may go
    assert 0.9 - 1e-6 <= loose < 0.9  # 0.1 and 0.4 may go (cost 0.5), 0.9 may not


def test_masks_keep_pruned_weights_at_zero_and_targets_exclude_biases():
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight[0, :2] = 0
    named = list(layer.named_parameters())
    assert threshold_targets(named) == [layer.weight]
    masks = nonzero_masks([layer.weight])
    with torch.no_grad():
        layer.weight.add_(1.0)
    apply_masks_([layer.weight], masks)
    assert layer.weight[0, :2].eq(0).all() and layer.weight[0, 2:].ne(0).all()
    stats = sparsity([("w", layer.weight), ("b", torch.zeros(3))])
    assert stats["w"] == pytest.approx(2 / 12) and stats["b"] == 1.0 and stats["global"] == pytest.approx(5 / 15)


@pytest.mark.parametrize("decoder", [False, True])
def test_compaction_removes_dead_types_and_preserves_outputs(decoder, small_capsnet):
    net = small_capsnet(decoder=decoder).double()
    per_type = net.grid[0] * net.grid[1]
    with torch.no_grad():
        net.primary.conv.weight[1 * 4 : 2 * 4] = 0  # type 1: convolution entirely pruned
        net.primary.conv.bias[1 * 4 : 2 * 4] = 0
        net.caps.weight[4 * per_type : 5 * per_type] = 0  # type 4: every routing matrix pruned
        net.caps.weight[2 * per_type] = 0  # one capsule of type 2: the type stays
    assert int(alive_primary_capsules(net).sum()) == 6 * per_type - 2 * per_type - 1
    small = compact(net)
    assert small.primary.types == 4 and small.num_primary == 4 * per_type
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())
    x = torch.rand(3, 1, 20, 20, dtype=torch.float64)
    net.eval(), small.eval()
    big_out, small_out = net(x), small(x)
    torch.testing.assert_close(small_out.lengths, big_out.lengths)
    torch.testing.assert_close(small_out.poses, big_out.poses)
    kept = torch.cat([torch.arange(t * per_type, (t + 1) * per_type) for t in (0, 2, 3, 5)])
    torch.testing.assert_close(small_out.coupling, big_out.coupling[:, kept])
    if decoder:
        torch.testing.assert_close(small_out.reconstruction, big_out.reconstruction)


def test_compaction_keeps_live_conv_types_with_nonzero_bias(small_capsnet):
    net = small_capsnet().double()
    with torch.no_grad():
        net.primary.conv.weight[0:4] = 0  # weights gone but the bias still makes a constant capsule
    small = compact(net)
    assert small.primary.types == 6
