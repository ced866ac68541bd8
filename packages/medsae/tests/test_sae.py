import math

import pytest
import torch
from medsae.sae import (
    SAE,
    AprilSAE,
    BatchTopKSAE,
    MatryoshkaSAE,
    TopKSAE,
    batch_topk_mask,
    geometric_median,
    make_sae,
    resample_dead,
    topk_mask,
)

S = 1 / math.sqrt(2)


def _set(sae, W_enc, b_enc, W_dec, b_dec):
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor(W_enc, dtype=torch.float64))
        sae.b_enc.copy_(torch.tensor(b_enc, dtype=torch.float64))
        sae.W_dec.copy_(torch.tensor(W_dec, dtype=torch.float64))
        sae.b_dec.copy_(torch.tensor(b_dec, dtype=torch.float64))
    return sae


def _hand_case(sae_cls, b_enc=(0.0, -0.5, -1.0), **kwargs):
    sae = sae_cls(2, 3, **kwargs).double()
    return _set(sae, [[1, 0], [0, 1], [1, 1]], b_enc, [[1, 0], [0, 1], [S, S]], [0.5, 0.0])


def _analytic_grads(f, W_dec, W_enc, x, b_dec, l1, mask):
    """Gradients of sum_d (x - x_hat)^2 + l1 * sum_i f_i worked out by hand (chain rule, one sample)."""
    err = x - (f @ W_dec + b_dec)
    g_xhat = -2 * err  # dL/dx_hat
    g_f = (W_dec @ g_xhat + l1) * mask  # ReLU / top-k pass gradient only where the latent is kept
    return {
        "W_dec": f[:, None] * g_xhat[None, :],
        "W_enc": g_f[:, None] * (x - b_dec)[None, :],
        "b_enc": g_f,
        "b_dec": g_xhat - W_enc.T @ g_f,
    }


def test_standard_sae_forward_loss_and_gradients_by_hand():
    sae = _hand_case(SAE, l1_coeff=0.1)
    x = torch.tensor([[1.5, 1.0]], dtype=torch.float64)
    # x - b_dec = (1, 1); pre-activations (1, 0.5, 1), all positive
    out = sae.loss(x)
    assert torch.allclose(out["f"], torch.tensor([[1.0, 0.5, 1.0]], dtype=torch.float64))
    # x_hat = (1.5 + s, 0.5 + s): mse = s^2 + (0.5 - s)^2 = 1.25 - s; L1 = 0.1 * 2.5
    assert out["mse"].item() == pytest.approx(1.25 - S)
    assert out["loss"].item() == pytest.approx(1.25 - S + 0.25)
    out["loss"].backward()
    want = _analytic_grads(
        out["f"][0].detach(), sae.W_dec.detach(), sae.W_enc.detach(), x[0], sae.b_dec.detach(), 0.1, torch.ones(3)
    )
    for name, g in want.items():
        assert torch.allclose(getattr(sae, name).grad, g.double(), atol=1e-12), name


def test_standard_sae_inactive_latent_gets_no_encoder_gradient():
    sae = _hand_case(SAE, b_enc=(0.0, -2.0, -1.0), l1_coeff=0.1)  # latent 1: pre-activation -1 -> off
    x = torch.tensor([[1.5, 1.0]], dtype=torch.float64)
    out = sae.loss(x)
    out["loss"].backward()
    assert out["f"][0, 1] == 0
    want = _analytic_grads(
        out["f"][0].detach(),
        sae.W_dec.detach(),
        sae.W_enc.detach(),
        x[0],
        sae.b_dec.detach(),
        0.1,
        torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64),
    )
    for name, g in want.items():
        assert torch.allclose(getattr(sae, name).grad, g, atol=1e-12), name
    assert torch.all(sae.W_enc.grad[1] == 0) and sae.b_enc.grad[1] == 0


def test_april_penalty_weights_l1_by_atom_norm_and_skips_b_dec():
    sae = _hand_case(AprilSAE, l1_coeff=0.1)
    with torch.no_grad():
        sae.W_dec.mul_(torch.tensor([[2.0], [1.0], [0.5]], dtype=torch.float64))
    x = torch.tensor([[1.5, 1.0]], dtype=torch.float64)
    out = sae.loss(x)
    # no b_dec subtraction: pre = W_enc x + b_enc = (1.5, 0.5, 1.5)
    f = torch.tensor([1.5, 0.5, 1.5], dtype=torch.float64)
    assert torch.allclose(out["f"][0], f)
    assert out["sparsity"].item() == pytest.approx(0.1 * (1.5 * 2 + 0.5 * 1 + 1.5 * 0.5))
    x_hat = f @ sae.W_dec.detach() + sae.b_dec.detach()
    assert out["mse"].item() == pytest.approx(float((x[0] - x_hat).pow(2).sum()))


def test_topk_forward_backward_by_hand():
    sae = _hand_case(TopKSAE, k=2)
    x = torch.tensor([[1.5, 1.0]], dtype=torch.float64)
    out = sae.loss(x)  # pre (1, 0.5, 1): the two largest are latents 0 and 2
    assert torch.equal(out["f"], torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64))
    x_hat = out["f"][0].detach() @ sae.W_dec.detach() + sae.b_dec.detach()
    assert out["loss"].item() == pytest.approx(float((x[0] - x_hat).pow(2).sum()))
    out["loss"].backward()
    want = _analytic_grads(
        out["f"][0].detach(),
        sae.W_dec.detach(),
        sae.W_enc.detach(),
        x[0],
        sae.b_dec.detach(),
        0.0,
        torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64),
    )
    for name, g in want.items():
        assert torch.allclose(getattr(sae, name).grad, g, atol=1e-12), name


def test_topk_and_batch_topk_selection_match_sorting():
    gen = torch.Generator().manual_seed(0)
    acts = torch.rand(6, 10, generator=gen)
    kept = topk_mask(acts, 3)
    for row, krow in zip(acts, kept):
        thresh = row.sort(descending=True).values[2]
        assert torch.equal(krow, torch.where(row >= thresh, row, 0.0))
    kept = batch_topk_mask(acts, 3)
    thresh = acts.flatten().sort(descending=True).values[3 * 6 - 1]
    assert torch.equal(kept, torch.where(acts >= thresh, acts, 0.0))
    assert (kept != 0).sum() == 18 and (kept != 0).sum(1).tolist() != [3] * 6  # per-sample counts may vary


def test_batch_topk_uses_threshold_at_inference():
    sae = BatchTopKSAE(4, 8, k=2, seed=1)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    sae.update_theta(torch.tensor(0.3))
    sae.update_theta(torch.tensor(0.5))  # EMA: 0.99 * 0.3 + 0.01 * 0.5
    assert sae.theta.item() == pytest.approx(0.302)
    sae.eval()
    acts = sae.pre_acts(x)
    assert torch.equal(sae.encode(x), torch.where(acts > 0.302, acts, 0.0))


def test_auxk_loss_by_hand():
    sae = _hand_case(TopKSAE, k=1, k_aux=1)
    x = torch.tensor([[1.5, 1.0]], dtype=torch.float64)
    dead = torch.tensor([False, True, False])
    acts = sae.pre_acts(x)  # (1, 0.5, 1); top-1 keeps latent 0 (first of the tie)
    f = topk_mask(acts, 1)
    residual = x - sae.decode(f)
    aux = sae.aux_loss(x, acts, f, dead)
    # the only dead latent (1, activation 0.5, atom (0, 1)) must explain the residual; variance over a batch of 1 is 0
    want_err = (residual[0] - 0.5 * torch.tensor([0.0, 1.0], dtype=torch.float64)).pow(2).sum()
    assert aux.item() == pytest.approx(want_err.item() / 1e-12)
    x2 = torch.tensor([[1.5, 1.0], [0.5, 2.0]], dtype=torch.float64)
    acts2 = sae.pre_acts(x2)
    f2 = topk_mask(acts2, 1)
    r2 = x2 - sae.decode(f2)
    e_hat = acts2[:, 1:2] * sae.W_dec[1:2]
    want = (r2 - e_hat).pow(2).sum(1).mean() / (r2 - r2.mean(0)).pow(2).sum(1).mean()
    assert sae.aux_loss(x2, acts2, f2, dead).item() == pytest.approx(want.item())


def test_matryoshka_loss_averages_prefix_reconstructions():
    sae = MatryoshkaSAE(3, 8, k=3, group_fractions=(0.25, 0.25, 0.5), seed=2).double()
    assert sae.prefix_ends == [2, 4, 8]
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    f = sae.encode(x)
    losses = []
    for end in (2, 4, 8):
        x_hat = f[:, :end] @ sae.W_dec[:end] + sae.b_dec
        losses.append(((x - x_hat) ** 2).sum(1).mean())
    assert sae.loss(x)["mse"].item() == pytest.approx(sum(losses).item() / 3)


@pytest.mark.parametrize("variant", ["standard", "topk", "batchtopk", "matryoshka"])
def test_atoms_stay_unit_norm_and_gradient_is_tangent(variant):
    sae = make_sae(variant, 6, 12, k=3, seed=4)
    opt = torch.optim.Adam(sae.parameters(), lr=0.05)
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(5))
    for _ in range(3):
        opt.zero_grad()
        sae.loss(x)["loss"].backward()
        sae.remove_parallel_grad()
        parallel = (sae.W_dec.grad * sae.W_dec).sum(1)
        assert parallel.abs().max() < 1e-5
        opt.step()
        sae.normalise_atoms()
        assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(12), atol=1e-6)


def test_april_atoms_are_free():
    sae = make_sae("april", 6, 12, l1_coeff=1.0, seed=4)
    opt = torch.optim.SGD(sae.parameters(), lr=0.1)
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(5))
    before = sae.W_dec.norm(dim=1).clone()
    sae.loss(x)["loss"].backward()
    sae.remove_parallel_grad()
    opt.step()
    sae.normalise_atoms()
    assert not torch.allclose(sae.W_dec.norm(dim=1), before)


def test_geometric_median_symmetric_and_obtuse_cases():
    square = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]) + torch.tensor([3.0, -2.0])
    assert torch.allclose(geometric_median(square), torch.tensor([3.0, -2.0]), atol=1e-5)
    # a triangle with a 150 degree angle at the origin: the Fermat point is that vertex
    obtuse = torch.tensor([[0.0, 0.0], [1.0, 0.0], [math.cos(math.radians(150)), math.sin(math.radians(150))]])
    assert torch.allclose(geometric_median(obtuse, iters=5000), torch.zeros(2), atol=1e-3)


def test_geometric_median_minimises_the_sum_of_distances():
    import scipy.optimize as scipy_opt

    pts = torch.randn(50, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64) ** 3
    ref = scipy_opt.minimize(
        lambda m: float((pts - torch.from_numpy(m)).norm(dim=1).sum()),
        pts.mean(0).numpy(),
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000},
    ).x
    med = geometric_median(pts)
    cost = lambda m: float((pts - m).norm(dim=1).sum())  # noqa: E731
    assert cost(med) <= cost(torch.from_numpy(ref)) + 1e-8
    assert torch.allclose(med, torch.from_numpy(ref), atol=1e-3)


def test_resample_dead_rewrites_only_dead_latents():
    sae = make_sae("standard", 4, 6, seed=7)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(8))
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    dead = torch.tensor([False, True, False, False, True, False])
    idx = resample_dead(sae, dead, x, torch.Generator().manual_seed(0))
    assert idx.tolist() == [1, 4]
    alive = ~dead
    assert torch.equal(sae.W_dec[alive], before["W_dec"][alive]) and torch.equal(
        sae.W_enc[alive], before["W_enc"][alive]
    )
    assert torch.allclose(sae.W_dec[dead].norm(dim=1), torch.ones(2))
    assert torch.all(sae.b_enc[dead] == 0)
    # new atoms point along centred inputs
    cos = torch.nn.functional.normalize(x - sae.b_dec, dim=1) @ sae.W_dec[dead].T
    assert torch.allclose(cos.max(0).values, torch.ones(2), atol=1e-5)


def test_bad_shapes_and_arguments_are_clear():
    with pytest.raises(ValueError, match=r"expected inputs \[B, 4\]"):
        make_sae("topk", 4, 8, k=2)(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="unknown SAE variant"):
        make_sae("gated", 4, 8)
    with pytest.raises(ValueError, match="k must be"):
        make_sae("topk", 4, 8, k=9)


def _mean_grads(per_sample):
    return {k: sum(g[k] for g in per_sample) / len(per_sample) for k in per_sample[0]}


def test_april_backward_by_hand():
    sae = _hand_case(AprilSAE, l1_coeff=0.1)
    with torch.no_grad():
        sae.W_dec.mul_(torch.tensor([[2.0], [1.0], [0.5]], dtype=torch.float64))
    x = torch.tensor([[1.5, 1.0]], dtype=torch.float64)
    out = sae.loss(x)
    out["loss"].backward()
    f, W_dec = out["f"][0].detach(), sae.W_dec.detach()
    norms = W_dec.norm(dim=1)
    g_xhat = -2 * (x[0] - (f @ W_dec + sae.b_dec.detach()))
    # L1 term l1 * sum_i f_i |d_i|: dL/df_i gains l1 |d_i|, dL/dd_i gains l1 f_i d_i / |d_i|
    g_f = (W_dec @ g_xhat + 0.1 * norms) * (f > 0)
    want = {
        "W_dec": f[:, None] * g_xhat[None, :] + 0.1 * f[:, None] * W_dec / norms[:, None],
        "W_enc": g_f[:, None] * x[0][None, :],  # no b_dec subtraction in the encoder
        "b_enc": g_f,
        "b_dec": g_xhat,
    }
    for name, g in want.items():
        assert torch.allclose(getattr(sae, name).grad, g, atol=1e-12), name


def _batch_case(cls, **kwargs):
    """Two samples where the batch-wide top 2 (k = 1, B = 2) both come from the second sample."""
    sae = cls(2, 3, k=1, **kwargs).double()
    _set(sae, [[1, 0], [0, 1], [1, 1]], [0.0, -0.5, -0.8], [[1, 0], [0, 1], [S, S]], [0.5, 0.0])
    # x - b_dec = (1, 1) and (0, 2.5): pre-activations (1, 0.5, 1.2) and (0, 2, 1.7)
    x = torch.tensor([[1.5, 1.0], [0.5, 2.5]], dtype=torch.float64)
    masks = [torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)]
    return sae, x, masks


def test_batch_topk_forward_backward_by_hand():
    sae, x, masks = _batch_case(BatchTopKSAE)
    out = sae.loss(x)
    # per-sample top-1 would keep latent 2 of sample 0; the batch-wide top 2 are 2.0 and 1.7, both in sample 1
    assert torch.equal(out["f"], torch.tensor([[0.0, 0.0, 0.0], [0.0, 2.0, 1.7]], dtype=torch.float64))
    # sample 0 is reconstructed by b_dec alone: error (1, 1); sample 1: x_hat = (0.5 + 1.7 s, 2 + 1.7 s)
    want_mse = (2.0 + (1.7 * S) ** 2 + (0.5 - 1.7 * S) ** 2) / 2
    assert out["mse"].item() == pytest.approx(want_mse) and out["loss"].item() == pytest.approx(want_mse)
    out["loss"].backward()
    args = sae.W_dec.detach(), sae.W_enc.detach()
    want = _mean_grads(
        [_analytic_grads(out["f"][b].detach(), *args, x[b], sae.b_dec.detach(), 0.0, masks[b]) for b in range(2)]
    )
    for name, g in want.items():
        assert torch.allclose(getattr(sae, name).grad, g, atol=1e-12), name


def test_matryoshka_forward_backward_by_hand():
    sae, x, masks = _batch_case(MatryoshkaSAE, group_fractions=(1 / 3, 2 / 3))
    assert sae.prefix_ends == [1, 3]
    out = sae.loss(x)
    assert torch.equal(out["f"], torch.tensor([[0.0, 0.0, 0.0], [0.0, 2.0, 1.7]], dtype=torch.float64))
    # prefix {0}: latent 0 is off in both samples, so x_hat = b_dec: errors |(1, 1)|^2 = 2 and |(0, 2.5)|^2 = 6.25
    small = (2.0 + 6.25) / 2
    full = (2.0 + (1.7 * S) ** 2 + (0.5 - 1.7 * S) ** 2) / 2
    assert out["mse"].item() == pytest.approx((small + full) / 2)
    out["loss"].backward()
    args = sae.W_dec.detach(), sae.W_enc.detach()
    prefix = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    per_prefix = []
    for keep in (prefix, torch.ones(3, dtype=torch.float64)):
        grads = [
            _analytic_grads(out["f"][b].detach() * keep, *args, x[b], sae.b_dec.detach(), 0.0, masks[b] * keep)
            for b in range(2)
        ]
        per_prefix.append(_mean_grads(grads))
    want = _mean_grads(per_prefix)
    for name, g in want.items():
        assert torch.allclose(getattr(sae, name).grad, g, atol=1e-12), name
