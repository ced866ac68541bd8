"""3DGS-MCMC relocation against a float64 double loop, and the relocation step's bookkeeping."""

import math

import torch
from gode.mcmc import relocate_dead, relocation_update


def reference(o, n):
    new_o = 1 - (1 - o) ** (1 / n)
    denom = sum(
        math.comb(i - 1, k) * (-1) ** k * new_o ** (k + 1) / math.sqrt(k + 1) for i in range(1, n + 1) for k in range(i)
    )
    return new_o, o / denom


def test_relocation_update_matches_the_closed_form_loop():
    ops = torch.tensor([0.9, 0.3, 0.05, 0.7, 0.99, 0.5])
    copies = torch.tensor([1, 2, 3, 5, 8, 20])
    scales = torch.rand(6, 3) + 0.1
    new_op, new_scales = relocation_update(ops, scales, copies)
    for j in range(6):
        o_ref, ratio = reference(float(ops[j]), int(copies[j]))
        assert abs(float(new_op[j]) - o_ref) < 1e-6
        torch.testing.assert_close(new_scales[j], scales[j] * ratio, rtol=1e-5, atol=0)


def test_one_copy_is_unchanged_and_copies_restore_the_opacity():
    ops = torch.tensor([0.2, 0.8])
    new_op, new_scales = relocation_update(ops, torch.ones(2, 3), torch.tensor([1, 1]))
    torch.testing.assert_close(new_op, ops)
    torch.testing.assert_close(new_scales, torch.ones(2, 3))
    new_op, _ = relocation_update(ops, torch.ones(2, 3), torch.tensor([4, 4]))
    torch.testing.assert_close(1 - (1 - new_op) ** 4, ops)  # n stacked copies are as opaque as the original


def test_relocate_dead_moves_dead_onto_live_gaussians():
    n = 10
    params = {
        "means": torch.arange(n * 3, dtype=torch.float).view(n, 3),
        "quats": torch.randn(n, 4),
        "log_scales": torch.zeros(n, 3),
        "opacity_logits": torch.logit(torch.tensor([0.9, 0.001, 0.5, 0.002, 0.8, 0.7, 0.6, 0.001, 0.4, 0.3])),
        "sh0": torch.randn(n, 1, 3),
        "shN": torch.randn(n, 3, 3),
    }
    dead = [1, 3, 7]
    changed = relocate_dead(params, 0.005, torch.Generator().manual_seed(0))
    assert set(dead) <= set(changed.tolist())
    for d in dead:
        # each dead Gaussian is now an exact copy of some live one (whose opacity was split)
        src = [i for i in range(n) if i not in dead and torch.equal(params["means"][i], params["means"][d])]
        assert len(src) == 1
        for name in params:
            assert torch.equal(params[name][d], params[name][src[0]])
    assert (torch.sigmoid(params["opacity_logits"]) > 0.005).all()
