"""ICIP: FLOPs counting by hand, L1 filter pruning against the dense network, the FLOPs target and the capsule rule."""

import pytest
import torch
from capsnet_rem.efficient import BackboneCapsNet, MobileNetV1, count_flops, prune_mobilenet, prune_to_flops
from torch import nn


def test_count_flops_hand_worked():
    # 3x3 conv 3 -> 8 on 10x10 (no padding): 8x8 outputs per filter, 27 multiply-adds each, 2 FLOPs per MAC
    conv = nn.Conv2d(3, 8, 3, bias=False)
    assert count_flops(conv, (3, 10, 10)) == 2 * 8 * (8 * 8) * 27
    # a linear layer 5 -> 4: 20 MACs
    assert count_flops(nn.Linear(5, 4, bias=False), (5,)) == 2 * 20


def _dead_filters_net() -> tuple[MobileNetV1, list[torch.Tensor]]:
    """A MobileNetV1 in eval mode where every 4th filter of each producer is dead (zero weights, zero BN shift).

    A dead filter outputs relu(BN(0)) = relu(beta) = 0 everywhere, and so does the depthwise conv that reads it; the
    network's output channels that stay alive are therefore exactly those of the network without the dead filters.
    """
    torch.manual_seed(0)
    net = MobileNetV1(1, width_mult=0.5, stem_stride=1, max_blocks=3).double().eval()
    producers = [net.stem] + [block[1] for block in net.blocks]
    alive = []
    with torch.no_grad():
        for k, prod in enumerate(producers):
            conv, bn = prod[0], prod[1]
            conv.weight.add_(torch.sign(conv.weight) * 0.5)  # every live filter's L1 norm clearly above zero
            dead = torch.arange(1, conv.out_channels, 4)
            conv.weight[dead] = 0
            bn.bias[dead] = 0
            bn.running_mean[dead] = 0
            if k + 1 < len(producers):  # the next block's depthwise conv on the dead channels: zero shift too
                net.blocks[k][0][1].bias[dead] = 0
                net.blocks[k][0][1].running_mean[dead] = 0
            keep = torch.ones(conv.out_channels, dtype=torch.bool)
            keep[dead] = False
            alive.append(keep)
    return net, alive


def test_l1_pruning_drops_the_smallest_filters_and_keeps_the_function():
    net, alive = _dead_filters_net()
    assert [int(a.sum()) for a in alive] == [12, 24, 48, 48]  # 16, 32, 64, 64 filters, a quarter dead
    small = prune_mobilenet(net, 0.75).eval()
    assert small.out_channels == 48
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(small(x), net(x)[:, alive[-1]])


def test_pruning_with_full_ratio_is_the_identity():
    net, _ = _dead_filters_net()
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(prune_mobilenet(net, 1.0).eval()(x), net(x))


@pytest.mark.parametrize("target", [0.75, 0.5, 0.25])
def test_prune_to_flops_reaches_the_target_from_below(target):
    torch.manual_seed(0)
    net = MobileNetV1(1, width_mult=0.5, stem_stride=1, max_blocks=4)
    small, ratio, reached = prune_to_flops(net, prune_mobilenet, target, (1, 16, 16))
    dense = count_flops(net, (1, 16, 16))
    assert reached == count_flops(small, (1, 16, 16)) / dense
    assert target - 0.1 < reached <= target
    # a slightly larger keep-ratio would exceed the target (the bisection found the boundary)
    assert count_flops(prune_mobilenet(net, ratio + 0.02), (1, 16, 16)) / dense > target


def test_capsule_head_has_channels_over_8_capsules_over_the_whole_map():
    torch.manual_seed(0)
    net = BackboneCapsNet("mobilenet_v1", (1, 16, 16), 10, flops_ratio=0.5, width_mult=0.5, max_blocks=4)
    channels = net.backbone.out_channels
    assert net.flops_reached <= 0.5
    assert net.num_primary == channels // 8  # one capsule per type: the kernel covers the whole feature map
    out = net(torch.rand(3, 1, 16, 16))
    assert out.lengths.shape == (3, 10) and out.coupling.shape == (3, channels // 8, 10)
