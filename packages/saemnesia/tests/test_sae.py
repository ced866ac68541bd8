import torch
from saemnesia.sae import TopKSAE, batch_topk_activation, topk_activation


def test_topk_hand_case():
    pre = torch.tensor([[3.0, -1.0, 2.0, 0.5], [-2.0, -1.0, 4.0, 1.0]])
    assert torch.equal(topk_activation(pre, 2), torch.tensor([[3.0, 0, 2.0, 0], [0, 0, 4.0, 1.0]]))


def test_topk_drops_negative_values_even_if_selected():
    pre = torch.tensor([[1.0, -1.0, -2.0]])
    assert torch.equal(topk_activation(pre, 2), torch.tensor([[1.0, 0.0, 0.0]]))


def test_batch_topk_hand_case():
    # 2 rows x k=1 -> the two largest values of the whole batch survive, both in row 0
    pre = torch.tensor([[5.0, 4.0, 0.1], [1.0, 0.2, 0.3]])
    assert torch.equal(batch_topk_activation(pre, 1), torch.tensor([[5.0, 4.0, 0.0], [0.0, 0.0, 0.0]]))


def test_forward_matches_explicit_formula():
    torch.manual_seed(0)
    sae = TopKSAE(6, 12, 3)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(6))
        sae.b_enc.copy_(torch.randn(12))
    x = torch.randn(5, 6, dtype=torch.float64)
    sae = sae.double()
    x_hat, z, pre = sae(x)
    ref_pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    assert torch.allclose(pre, ref_pre)
    for i in range(5):  # row by row: keep the 3 largest positive pre-activations
        keep = ref_pre[i].argsort(descending=True)[:3]
        ref_z = torch.zeros(12, dtype=torch.float64)
        ref_z[keep] = ref_pre[i, keep].clamp_min(0)
        assert torch.allclose(z[i], ref_z)
        assert torch.allclose(x_hat[i], ref_z @ sae.W_dec + sae.b_dec)


def test_auxk_zero_without_dead_and_hand_case_with_dead():
    sae = TopKSAE(2, 3, 1, aux_k=1, dead_after=1)
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    x = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    x_hat = torch.zeros_like(x)
    pre = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 1.0]])
    assert sae.auxk_loss(x, x_hat, pre) == 0
    sae.tokens_since_fired.copy_(torch.tensor([0, 0, 5]))  # latent 2 is dead
    # residual e = x; e_hat = pre[:, 2] * W_dec[2]; loss = mean ||e_hat - e||^2 / mean ||e - mean(e)||^2
    e_hat = torch.tensor([[1.2, 1.6], [0.6, 0.8]])
    num = ((e_hat - x) ** 2).sum(-1).mean()
    den = ((x - x.mean(0)) ** 2).sum(-1).mean()
    assert torch.isclose(sae.auxk_loss(x, x_hat, pre), num / den)


def test_dead_counter():
    sae = TopKSAE(2, 3, 1, dead_after=4)
    sae.update_dead(torch.tensor([[1.0, 0, 0], [0, 0, 0]]))
    sae.update_dead(torch.tensor([[1.0, 0, 0], [0, 2.0, 0]]))
    assert sae.tokens_since_fired.tolist() == [0, 0, 4]
    assert sae.dead_mask.tolist() == [False, False, True]


def test_decoder_stays_unit_norm_after_a_step():
    torch.manual_seed(1)
    sae = TopKSAE(8, 32, 4)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    x = torch.randn(64, 8)
    x_hat, _, _ = sae(x, batch_topk=True)
    ((x_hat - x) ** 2).mean().backward()
    w = sae.W_dec.detach().clone()
    sae.remove_parallel_grad()
    assert torch.allclose((sae.W_dec.grad * w).sum(-1), torch.zeros(32), atol=1e-6)
    opt.step()
    sae.normalize_decoder()
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(32), atol=1e-6)
