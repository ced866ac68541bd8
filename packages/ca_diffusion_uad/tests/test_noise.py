import math

import torch
from ca_diffusion_uad.noise import permutation_table, sample_noise, simplex_2d, simplex_noise

GRAD = [(1, 1), (-1, 1), (1, -1), (-1, -1), (1, 0), (-1, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (0, 1), (0, -1)]


def reference_simplex(x: float, y: float, perm: list[int]) -> float:
    """Gustavson's textbook 2D simplex noise, one point at a time, in float64."""
    f2, g2 = 0.5 * (math.sqrt(3) - 1), (3 - math.sqrt(3)) / 6
    s = (x + y) * f2
    i, j = math.floor(x + s), math.floor(y + s)
    t = (i + j) * g2
    x0, y0 = x - (i - t), y - (j - t)
    i1, j1 = (1, 0) if x0 > y0 else (0, 1)
    pts = [(x0, y0, 0, 0), (x0 - i1 + g2, y0 - j1 + g2, i1, j1), (x0 - 1 + 2 * g2, y0 - 1 + 2 * g2, 1, 1)]
    ii, jj = i & 255, j & 255
    n = 0.0
    for px, py, di, dj in pts:
        g = GRAD[perm[ii + di + perm[jj + dj]] % 12]
        r = 0.5 - px * px - py * py
        if r > 0:
            n += r**4 * (g[0] * px + g[1] * py)
    return 70 * n


def test_vectorised_simplex_matches_scalar_reference():
    perm = permutation_table(torch.Generator().manual_seed(3))
    pts = torch.rand(200, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 50 - 10
    ours = simplex_2d(pts[:, 0], pts[:, 1], perm)
    ref = torch.tensor([reference_simplex(float(a), float(b), perm.tolist()) for a, b in pts], dtype=torch.float64)
    torch.testing.assert_close(ours, ref)
    assert ours.abs().max() <= 1.0


def test_simplex_noise_is_deterministic_by_seed_and_standardised():
    a = simplex_noise((3, 1, 32, 32), torch.Generator().manual_seed(0))
    b = simplex_noise((3, 1, 32, 32), torch.Generator().manual_seed(0))
    c = simplex_noise((3, 1, 32, 32), torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])  # one field per image
    torch.testing.assert_close(a.mean(dim=(-2, -1)), torch.zeros(3, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(a.std(dim=(-2, -1)), torch.ones(3, 1), atol=1e-5, rtol=0)


def test_simplex_noise_is_spatially_correlated_unlike_gaussian():
    def lag1(x):
        x = x - x.mean()
        return float((x[..., 1:] * x[..., :-1]).mean() / (x * x).mean())

    s = simplex_noise((8, 1, 64, 64), torch.Generator().manual_seed(0))
    g = sample_noise(torch.zeros(8, 1, 64, 64), "gaussian", torch.Generator().manual_seed(0))
    assert lag1(s) > 0.6
    assert abs(lag1(g)) < 0.05


def test_sample_noise_uses_the_global_rng_when_no_generator():
    torch.manual_seed(5)
    a = sample_noise(torch.zeros(2, 1, 16, 16), "simplex")
    torch.manual_seed(5)
    b = sample_noise(torch.zeros(2, 1, 16, 16), "simplex")
    assert torch.equal(a, b)
