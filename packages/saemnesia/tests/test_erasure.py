import pytest
import torch
from saemnesia.erasure import ConceptEraser, ErasureStack, feature_scores, select_by_quantile
from saemnesia.sae import TopKSAE, topk_activation
from torch import nn


def _sae(seed=0):
    torch.manual_seed(seed)
    sae = TopKSAE(8, 32, 4)
    with torch.no_grad():
        sae.b_dec.copy_(0.1 * torch.randn(8))
    return sae


def test_feature_scores_hand_case():
    mean_acts = torch.tensor([[3.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 2.0, 0.0]])
    # latent 0: p = (0.75, 0.25, 0); score_0 = 0.75 - mean(0.25, 0) = 0.625
    scores = feature_scores(mean_acts)
    assert torch.allclose(scores[:, 0], torch.tensor([0.625, -0.125, -0.5]))
    assert torch.allclose(scores[:, 1], torch.tensor([0.25 - 0.375, 0.25 - 0.375, 0.5 - 0.25]))
    assert torch.equal(scores[:, 2], torch.zeros(3))  # never fires


def test_feature_scores_activity_filter_hand_case():
    # latent 1 fires only on concept 0, but 1000x more weakly than latent 0 does: the ratio score alone prefers it
    mean_acts = torch.tensor([[2.0, 0.002, 0.5], [1.0, 0.0, 0.5]])
    plain = feature_scores(mean_acts)
    assert plain[0].argmax() == 1  # p = 1 - 0 = 1 beats latent 0's 2/3 - 1/3
    filtered = feature_scores(mean_acts, min_activity=0.1)
    # concept 0: threshold 0.2 removes latent 1 only; concept 1: threshold 0.1 removes latent 1 (0.0)
    assert filtered[0].tolist() == pytest.approx([2 / 3 - 1 / 3, -1.0, 0.0])
    assert filtered[1].tolist() == pytest.approx([1 / 3 - 2 / 3, -1.0, 0.0])
    assert filtered[0].argmax() == 0


def test_select_by_quantile():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7])
    assert select_by_quantile(scores, 0.75).tolist() == [1]
    assert sorted(select_by_quantile(scores, 0.0).tolist()) == [0, 1, 2, 3]


def test_multiplier_one_is_identity_exactly():
    sae = _sae()
    x = torch.randn(50, 8)
    lat = torch.tensor([3, 7])
    eraser = ConceptEraser(sae, lat, torch.tensor([2.0, 0.5]), torch.zeros(2), multiplier=1.0, scale_by_mean=False)
    assert torch.equal(eraser.edit(x), x)
    # the paper's rule z * mean * multiplier: multiplier = 1 / mean is the identity too
    means = torch.tensor([2.0, 0.5])
    eraser = ConceptEraser(sae, lat, means, torch.zeros(2), multiplier=1.0)
    eraser.concept_means = torch.ones(2)
    assert torch.equal(eraser.edit(x), x)


def test_edit_equals_reference_formula_and_touches_only_selected_tokens():
    sae = _sae(1).double()
    x = torch.randn(40, 8, dtype=torch.float64)
    lat, means, thr = torch.tensor([5]), torch.tensor([1.5]), torch.tensor([0.2])
    eraser = ConceptEraser(sae, lat, means, thr, multiplier=-5.0)
    out = eraser.edit(x)
    z = topk_activation(sae.pre_acts(x), sae.k)
    sel = z[:, 5] > 0.2
    z2 = z.clone()
    z2[sel, 5] = z[sel, 5] * 1.5 * -5.0
    ref = sae.decode(z2) + (x - sae.decode(z))  # D(z') + (x - D(z))
    assert torch.allclose(out, ref, atol=1e-10)
    assert torch.equal(out[~sel], x[~sel])  # unselected tokens are returned bit for bit
    assert sel.any() and not torch.allclose(out[sel], x[sel])
    slip = ConceptEraser(sae, lat, means, thr, multiplier=-5.0, reference_sign_slip=True).edit(x)
    assert torch.allclose(slip, sae.decode(z2) + sae.decode(z) - x, atol=1e-10)


class _Block(nn.Module):
    def forward(self, h):
        return (h,)


def test_hook_edits_both_cfg_halves_and_keeps_tuple():
    sae = _sae(2)
    block = _Block()
    eraser = ConceptEraser(sae, torch.tensor([1, 2]), torch.ones(2), torch.full((2,), -1.0), multiplier=-3.0)
    handle = block.register_forward_hook(ErasureStack([eraser]))
    h = torch.randn(4, 8, 3, 3)  # [uncond; cond] x C=8 x 3x3
    (out,) = block(h)
    handle.remove()
    tokens = h.permute(0, 2, 3, 1).reshape(-1, 8)
    ref = eraser.edit(tokens).view(4, 3, 3, 8).permute(0, 3, 1, 2)
    assert torch.allclose(out, ref)
    assert not torch.allclose(out[:2], h[:2]) and not torch.allclose(out[2:], h[2:])


def test_candidate_shortcut_matches_full_encoding():
    # several latents, k = 2 of 32: many tokens have pre_L above the threshold without z_L making the TopK
    torch.manual_seed(3)
    sae = TopKSAE(8, 32, 2).double()
    with torch.no_grad():
        sae.b_enc.copy_(0.5 * torch.randn(32))
    x = torch.randn(300, 8, dtype=torch.float64)
    lat, means, thr = torch.tensor([1, 9, 20]), torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.1, 0.0, 0.3])
    out = ConceptEraser(sae, lat, means, thr, multiplier=-15.0).edit(x)
    z = topk_activation(sae.pre_acts(x), sae.k)  # the full computation on every token
    z2 = z.clone()
    sel = z[:, lat] > thr
    z2[:, lat] = torch.where(sel, z[:, lat] * means * -15.0, z[:, lat])
    assert torch.allclose(out, x + (z2 - z) @ sae.W_dec, atol=1e-10)
    candidates = (sae.pre_acts(x)[:, lat] > thr).any(1)
    assert bool((candidates & ~sel.any(1)).any())  # the case the shortcut must not edit occurs


def test_fast_path_equals_full_encode_edit_decode_float64():
    # one latent (the counting branch) and two (also counting) and three (the k-th value branch), against the full
    # formulation D(z') + (x - D(z)) with a TopK over every latent of every token
    torch.manual_seed(4)
    sae = TopKSAE(8, 64, 3).double()
    with torch.no_grad():
        sae.b_enc.copy_(0.3 * torch.randn(64))
        sae.b_dec.copy_(0.2 * torch.randn(8))
    x = torch.randn(500, 8, dtype=torch.float64)
    for lat in ([7], [7, 30], [7, 30, 41]):
        lat = torch.tensor(lat)
        means, thr = torch.linspace(0.5, 2.0, len(lat)), torch.linspace(0.05, 0.2, len(lat))
        eraser = ConceptEraser(sae, lat, means, thr, multiplier=-10.0)
        out = eraser.edit(x)
        z = topk_activation(sae.pre_acts(x), sae.k)
        z2 = z.clone()
        sel = z[:, lat] > thr.double()
        z2[:, lat] = torch.where(sel, z[:, lat] * means.double() * -10.0, z[:, lat])
        ref = sae.decode(z2) + (x - sae.decode(z))
        assert torch.allclose(out, ref, atol=1e-10)
        assert eraser.edited_tokens == int(sel.any(1).sum()) > 0
        assert torch.equal(out[~sel.any(1)], x[~sel.any(1)])
