"""Squash, routing and losses against independent float64 loop implementations and hand-worked numbers."""

import math

import pytest
import torch
from capsnet_rem.capsules import ClassCapsules, bin_index, dynamic_routing, margin_loss, squash


def loop_routing(u, bias, iterations, detach_votes=True):
    """Float64 reference with explicit loops: u[b][i][j] is a D-vector, softmax over j for every (b, i)."""
    bsz, n_in, n_out, _ = u.shape
    vs, cs = [], []
    for b in range(bsz):
        logits = [[torch.zeros((), dtype=torch.float64) for _ in range(n_out)] for _ in range(n_in)]
        for it in range(iterations):
            last = it == iterations - 1
            c = []
            for i in range(n_in):
                exps = [torch.exp(logits[i][j]) for j in range(n_out)]
                total = sum(exps)
                c.append([e / total for e in exps])
            v = []
            for j in range(n_out):
                s = bias[j].clone()
                for i in range(n_in):
                    vote = u[b, i, j] if (last or not detach_votes) else u[b, i, j].detach()
                    s = s + c[i][j] * vote
                norm2 = (s * s).sum()
                v.append(norm2 / (1 + norm2) * s / torch.sqrt(norm2 + 1e-6))
            if not last:
                for i in range(n_in):
                    for j in range(n_out):
                        vote = u[b, i, j].detach() if detach_votes else u[b, i, j]
                        logits[i][j] = logits[i][j] + (v[j] * vote).sum()
        vs.append(torch.stack(v))
        cs.append(torch.stack([torch.stack(row) for row in c]))
    return torch.stack(vs), torch.stack(cs)


def test_squash_hand_worked():
    s = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    out = squash(s)
    expected = torch.tensor([3.0, 4.0], dtype=torch.float64) * (25 / 26) / math.sqrt(25 + 1e-6)
    torch.testing.assert_close(out[0], expected)
    assert torch.equal(out[1], torch.zeros(2, dtype=torch.float64))  # eps keeps the zero vector finite


@pytest.mark.parametrize("iterations", [1, 3])
def test_routing_matches_float64_loop(iterations):
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    bias = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    v, c = dynamic_routing(u.permute(0, 2, 1, 3), bias, iterations)
    v_ref, c_ref = loop_routing(u, bias, iterations)
    torch.testing.assert_close(v, v_ref)
    torch.testing.assert_close(c, c_ref)
    # each input capsule distributes one unit over the OUTPUT capsules
    torch.testing.assert_close(c.sum(2), torch.ones(2, 5, dtype=torch.float64))


def test_votes_receive_gradient_only_through_last_iteration():
    gen = torch.Generator().manual_seed(1)
    u0 = torch.randn(2, 6, 3, 4, generator=gen, dtype=torch.float64)
    bias0 = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    probe = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)

    def grads(fn):
        u, bias = u0.clone().requires_grad_(), bias0.clone().requires_grad_()
        v = fn(u, bias)
        return torch.autograd.grad((v * probe).sum(), (u, bias))

    got = grads(lambda u, b: dynamic_routing(u.permute(0, 2, 1, 3), b, 3)[0])
    ref = grads(lambda u, b: loop_routing(u, b, 3)[0])
    torch.testing.assert_close(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1])
    # second formulation: d v / d u_hat is that of squash(sum_i c_ij u_hat + b) with the final couplings held fixed
    _, c_final = loop_routing(u0, bias0, 3)
    fixed = grads(lambda u, b: squash(torch.einsum("bij,bijd->bjd", c_final, u) + b))[0]
    torch.testing.assert_close(got[0], fixed)
    # and it is NOT the gradient of routing without detached votes (the test can tell the two apart)
    full = grads(lambda u, b: loop_routing(u, b, 3, detach_votes=False)[0])[0]
    assert not torch.allclose(got[0], full, atol=1e-6)


def test_class_capsule_votes_are_per_position_matrix_products():
    torch.manual_seed(0)
    layer = ClassCapsules(in_caps=4, in_dims=3, out_caps=2, out_dims=5).double()
    u = torch.randn(2, 4, 3, dtype=torch.float64)
    votes = layer.votes(u)  # [B, J, I, D]
    for b in range(2):
        for i in range(4):
            for j in range(2):
                torch.testing.assert_close(votes[b, j, i], u[b, i] @ layer.weight[i, :, j, :])


def test_quantized_routing_uses_bin_centres_at_last_iteration():
    gen = torch.Generator().manual_seed(2)
    u = torch.randn(3, 7, 4, 2, generator=gen, dtype=torch.float64)
    bias = torch.zeros(4, 2, dtype=torch.float64)
    _, c = dynamic_routing(u.permute(0, 2, 1, 3), bias, 3)
    v_q, c_q = dynamic_routing(u.permute(0, 2, 1, 3), bias, 3, quantize_bins=11)
    torch.testing.assert_close(c_q, torch.round(c * 10) / 10)
    s = torch.einsum("bij,bijd->bjd", torch.round(c * 10) / 10, u)
    torch.testing.assert_close(v_q, squash(s))


def test_bin_index_edges():
    c = torch.tensor([0.0, 0.049, 0.051, 0.5, 0.949, 0.951, 1.0])
    assert bin_index(c, 11).tolist() == [0, 0, 1, 5, 9, 10, 10]


def test_margin_loss_hand_worked():
    lengths = torch.tensor([[0.95, 0.2, 0.05], [0.5, 0.05, 0.3]])
    target = torch.tensor([0, 2])
    # sample 0: 0 + 0.5 * 0.1^2 + 0 = 0.005;  sample 1: 0.6^2 + 0.5 * 0.4^2 = 0.44
    torch.testing.assert_close(margin_loss(lengths, target), torch.tensor((0.005 + 0.44) / 2))
