"""Gate shapes, top-k renormalisation, sparse dispatch and the resolution-based routing loss."""

from __future__ import annotations

import pytest
import torch
from boost_nerf.encoding import raw_to_alpha
from boost_nerf.experts import DenseVoxelExpert, make_expert
from boost_nerf.gate import NeRFGate, top_k_routing
from boost_nerf.losses import resolution_balancing_loss
from boost_nerf.moe import dispatch

AABB = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)


# Small experts of each backbone for the dispatch tests.
SMALL = {
    "dvgo": {"feature_dim": 4, "mlp_width": 16},
    "tensorf": {"density_components": 2, "appearance_components": 3, "feature_dim": 5, "mlp_width": 16},
    "ngp": {"levels": 3, "log2_table_size": 8, "base_resolution": 4, "mlp_width": 16},
}


def _random_experts(backbone: str, resolutions: list[int], seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    experts = [make_expert(backbone, r, AABB, **kwargs) for r in resolutions]
    with torch.no_grad():
        for e in experts:
            for p in e.grid_parameters():
                p.normal_(0, 0.5)
    return experts


def _points(n: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=gen) * 1.8 - 0.9
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    return x, d


def test_top_k_hand_worked():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    w2, i2 = top_k_routing(probs, 2)
    assert torch.allclose(w2, torch.tensor([[0.625, 0.375, 0.0], [0.0, 0.2 / 0.9, 0.7 / 0.9]]))
    assert i2.tolist() == [[0, 1], [2, 1]]
    w1, i1 = top_k_routing(probs, 1)  # k = 1 keeps the raw probability (no renormalisation)
    assert torch.allclose(w1, torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.7]]))
    assert i1.tolist() == [[0], [2]]
    with pytest.raises(ValueError):
        top_k_routing(probs, 4)


def test_gate_shapes_and_renormalisation():
    gate = NeRFGate(5, 8, AABB, feature_dim=12, hidden=64)
    assert gate.mlp[0].in_features == 12 + 27  # the paper's Linear(39, 64)
    x, d = _points(100)
    logits = gate(x, d)
    assert logits.shape == (100, 5)
    weights, index = top_k_routing(torch.softmax(logits, -1), 2)
    assert index.shape == (100, 2)
    assert ((weights > 0).sum(-1) == 2).all()
    assert torch.allclose(weights.sum(-1), torch.ones(100))


def test_gate_init_copies_a_same_size_dvgo_feature_grid():
    expert = DenseVoxelExpert(8, AABB, feature_dim=4, mlp_width=8)
    with torch.no_grad():
        expert.feature_grid.normal_()
    gate = NeRFGate(3, 8, AABB, feature_dim=4)
    gate.init_from(expert)
    assert torch.allclose(gate.grid, expert.feature_grid, atol=1e-6)


@pytest.mark.parametrize("backbone", ["dvgo", "tensorf", "ngp"])
def test_sparse_dispatch_equals_dense_evaluation_restricted_to_routed_points(backbone):
    experts = _random_experts(backbone, [6, 8, 10], **SMALL[backbone])
    x, d = _points(300)
    probs = torch.softmax(torch.randn(300, 3, generator=torch.Generator().manual_seed(2)) * 2, -1)
    weights, index = top_k_routing(probs, 2)
    rgb, alpha, counts = dispatch(experts, x, d, weights, index, act_shift=-4.0, interval=0.5)
    # Reference: every expert on every point, then keep only what was routed (same summation order).
    ref_rgb, ref_alpha = torch.zeros(300, 3), torch.zeros(300)
    for e, expert in enumerate(experts):
        routed = (index == e).any(-1)
        c, raw = expert(x, d)
        a = raw_to_alpha(raw, -4.0, 0.5)
        ref_rgb = ref_rgb + torch.where(routed[:, None], weights[:, e : e + 1] * c, 0.0)
        ref_alpha = ref_alpha + torch.where(routed, weights[:, e] * a, 0.0)
        assert counts[e] == routed.sum()
    # Not bitwise: torch's CPU sigmoid/softplus/expm1 take the vectorised or the scalar tail path depending on where
    # an element falls in its batch, which moves the last bit. Matmuls and gathers agree exactly (checked below).
    torch.testing.assert_close(rgb, ref_rgb, rtol=1e-6, atol=0)
    torch.testing.assert_close(alpha, ref_alpha, rtol=1e-6, atol=0)
    assert counts.sum() == 2 * 300
    routed = (index == 1).any(-1)
    net = experts[1].rgbnet if backbone != "ngp" else experts[1].density_net
    feats = torch.randn(300, net[0].in_features, generator=torch.Generator().manual_seed(3))
    assert torch.equal(net(feats)[routed], net(feats[routed]))
    # Ensemble: every expert on every point with the full softmax weights.
    rgb_all, _, counts_all = dispatch(experts, x, d, probs, None, -4.0, 0.5)
    dense = sum(probs[:, e : e + 1] * experts[e](x, d)[0] for e in range(3))
    assert torch.allclose(rgb_all, dense, atol=1e-6) and counts_all.tolist() == [300, 300, 300]


def test_dispatch_gradients_reach_only_routed_experts():
    experts = _random_experts("dvgo", [6, 8, 10], feature_dim=4, mlp_width=8)
    x, d = _points(50)
    index = torch.zeros(50, 1, dtype=torch.long)  # everything to expert 0
    weights = torch.zeros(50, 3)
    weights[:, 0] = 1.0
    rgb, alpha, _ = dispatch(experts, x, d, weights, index, -4.0, 0.5)
    (rgb.sum() + alpha.sum()).backward()
    assert experts[0].feature_grid.grad.abs().sum() > 0
    assert experts[1].feature_grid.grad is None and experts[2].feature_grid.grad is None


def test_resolution_balancing_loss_hand_worked():
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]], requires_grad=True)
    counts = torch.tensor([2, 1])  # top-1 picks expert 0, 1, 0
    weights = torch.tensor([1.0, 2.0])
    # M / (sum c)^2 * sum_i m_i c_i w_i = 2 / 9 * (2.0 * 2 * 1 + 1.0 * 1 * 2) = 4 / 3
    loss = resolution_balancing_loss(probs, counts, weights)
    assert loss.item() == pytest.approx(4 / 3)
    loss.backward()
    # d loss / d p_{n,i} = M / (sum c)^2 * c_i * w_i, the same for every point
    assert torch.allclose(probs.grad, torch.tensor([[4 / 9, 4 / 9]]).expand(3, 2))


def test_balancing_loss_prefers_low_resolution_experts():
    weights = torch.tensor([1.0, 1.5, 2.23, 3.35, 5.0])
    to_low = torch.zeros(10, 5)
    to_low[:, 0] = 1.0
    to_high = torch.zeros(10, 5)
    to_high[:, 4] = 1.0
    loss_low = resolution_balancing_loss(to_low, torch.tensor([10, 0, 0, 0, 0]), weights)
    loss_high = resolution_balancing_loss(to_high, torch.tensor([0, 0, 0, 0, 10]), weights)
    assert loss_low < loss_high


def test_renormalised_top1_hand_worked_and_gradient():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]], requires_grad=True)
    w1, i1 = top_k_routing(probs, 1, renormalize_top1=True)
    assert torch.equal(w1.detach(), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))  # exactly 1, not 0.5 / 0.7
    assert i1.tolist() == [[0], [2]]
    # p / stop_grad(p): d w / d p = 1 / p on the chosen entry, so the reconstruction loss still trains the gate.
    (w1 * torch.tensor([[2.0, 5.0, 5.0], [5.0, 5.0, 3.0]])).sum().backward()
    assert torch.allclose(probs.grad, torch.tensor([[2.0 / 0.5, 0.0, 0.0], [0.0, 0.0, 3.0 / 0.7]]))
    # The switch concerns k = 1 only: Top-2 is renormalised either way.
    w2, _ = top_k_routing(probs.detach(), 2, renormalize_top1=True)
    assert torch.equal(w2, top_k_routing(probs.detach(), 2)[0])


@pytest.mark.parametrize("backbone", ["dvgo", "tensorf", "ngp"])
def test_renormalised_top1_dispatch_returns_the_chosen_experts_output(backbone):
    experts = _random_experts(backbone, [6, 8, 10], **SMALL[backbone])
    x, d = _points(200)
    probs = torch.softmax(torch.randn(200, 3, generator=torch.Generator().manual_seed(4)), -1)
    weights, index = top_k_routing(probs, 1, renormalize_top1=True)
    rgb, alpha, counts = dispatch(experts, x, d, weights, index, act_shift=-4.0, interval=0.5)
    chosen = probs.argmax(-1)
    for e, expert in enumerate(experts):
        sel = (chosen == e).nonzero().squeeze(1)
        assert counts[e] == len(sel)
        # Exact: the expert evaluated on the same rows, weight exactly 1, added once to zeros.
        c, raw = expert(x[sel], d[sel])
        assert torch.equal(rgb[sel], c) and torch.equal(alpha[sel], raw_to_alpha(raw, -4.0, 0.5))
        # Second formulation: every expert on every point, the chosen one picked per point (last-bit tolerance of
        # torch's vectorised sigmoid/softplus, see the dispatch test above).
        c_all, raw_all = expert(x, d)
        torch.testing.assert_close(rgb[sel], c_all[sel], rtol=1e-6, atol=0)
        torch.testing.assert_close(alpha[sel], raw_to_alpha(raw_all, -4.0, 0.5)[sel], rtol=1e-6, atol=0)
    # The released code's raw probability instead scales both by p < 1.
    raw_w, _ = top_k_routing(probs, 1)
    rgb_p, alpha_p, _ = dispatch(experts, x, d, raw_w, index, -4.0, 0.5)
    p = probs.max(-1).values
    torch.testing.assert_close(rgb_p, p[:, None] * rgb, rtol=1e-6, atol=0)
    torch.testing.assert_close(alpha_p, p * alpha, rtol=1e-6, atol=0)
