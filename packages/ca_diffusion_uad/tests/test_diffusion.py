import math

import pytest
import torch
from ca_diffusion_uad.diffusion import (
    cosine_alphas_cumprod,
    noise_from_x0,
    posterior_step,
    q_sample,
    reconstruct_chain,
    reconstruct_multi_t,
)
from diffusers import DDPMScheduler


def test_cosine_schedule_matches_diffusers_squaredcos_cap_v2():
    ours = cosine_alphas_cumprod(1000)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
    # Closed form away from the clipped tail: ᾱ_t = f(t+1)/f(0).
    f = lambda tau: math.cos((tau / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):
        assert ours[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)


def test_noising_then_true_noise_recovers_x0_exactly():
    ac = cosine_alphas_cumprod(1000)
    x0 = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 250, 500, 998])
    x_t = q_sample(x0, t, eps, ac)
    torch.testing.assert_close(noise_from_x0(x_t, t, x0, ac), eps)
    a = ac[t].view(-1, 1, 1, 1)
    torch.testing.assert_close((x_t - (1 - a).sqrt() * eps) / a.sqrt(), x0)


def test_posterior_step_matches_diffusers_ddpm_step_with_sample_prediction():
    sched = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample", clip_sample=False
    )
    ac = sched.alphas_cumprod.double()
    sched.alphas_cumprod, sched.one = ac, torch.tensor(1.0, dtype=torch.float64)  # compare in float64
    x_t = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    x0 = torch.randn_like(x_t)
    for t in (999, 400, 1):
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        ref = sched.step(x0, t, x_t, generator=torch.Generator().manual_seed(t)).prev_sample
        ours = posterior_step(x_t, t, t - 1, x0, ac, noise)
        torch.testing.assert_close(ours, ref)
    assert torch.equal(posterior_step(x_t, 0, -1, x0, ac, None), x0)


def test_perfect_denoiser_reconstructs_exactly():
    ac = cosine_alphas_cumprod(1000)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    clean = x.clone()

    def oracle(x_t, t, cond):
        return clean

    def noise_fn(like):
        return torch.randn_like(like)

    torch.testing.assert_close(reconstruct_multi_t(oracle, x, ac, (250, 500, 750), noise_fn), clean)
    # With the true x0 at every step, the chain's posterior mean contracts onto x0 and ends exactly on it.
    torch.testing.assert_close(reconstruct_chain(oracle, x, ac, 250, 26, noise_fn), clean)


def test_multi_t_averages_one_step_predictions_at_each_level():
    ac = cosine_alphas_cumprod(1000)
    x = torch.zeros(2, 1, 4, 4)
    seen = []

    def denoiser(x_t, t, cond):
        seen.append(int(t[0]))
        return torch.full_like(x_t, float(t[0]))

    out = reconstruct_multi_t(denoiser, x, ac, (250, 500, 750), torch.randn_like)
    assert seen == [250, 500, 750]
    torch.testing.assert_close(out, torch.full_like(x, 500.0))
