"""The three backbones: indexing against independent implementations, and fitting a toy density field."""

from __future__ import annotations

import math

import pytest
import torch
from boost_nerf.experts import DenseVoxelExpert, HashGridExpert, TensoRFExpert, level_resolutions, make_expert

AABB = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)


def _vertex_world(i: int, j: int, k: int, r: int) -> torch.Tensor:
    """World position of vertex (x=i, y=j, z=k) of an r-vertex grid over AABB (align_corners)."""
    return torch.tensor([[-1 + 2 * i / (r - 1), -1 + 2 * j / (r - 1), -1 + 2 * k / (r - 1)]])


def test_dense_grid_reads_the_vertex_it_sits_on():
    expert = DenseVoxelExpert(5, AABB, feature_dim=3, mlp_width=8)
    with torch.no_grad():
        expert.density_grid.copy_(torch.arange(125.0).view(1, 1, 5, 5, 5))
    for i, j, k in [(0, 0, 0), (4, 1, 2), (2, 3, 4)]:
        assert expert.density(_vertex_world(i, j, k, 5)).item() == pytest.approx(25 * k + 5 * j + i)
    # midway between two x-neighbours: the mean (trilinear interpolation)
    mid = (_vertex_world(1, 2, 3, 5) + _vertex_world(2, 2, 3, 5)) / 2
    assert expert.density(mid).item() == pytest.approx(25 * 3 + 5 * 2 + 1.5)


def test_tensorf_vm_matches_explicit_plane_line_products_at_vertices():
    torch.manual_seed(0)
    expert = TensoRFExpert(6, AABB, density_components=3, appearance_components=2, feature_dim=4, mlp_width=8)
    ijk = [(0, 0, 0), (5, 2, 1), (3, 4, 5), (1, 5, 2)]
    x = torch.cat([_vertex_world(*v, 6) for v in ijk])
    got = expert.density(x)
    for n, v in enumerate(ijk):
        total = 0.0
        for (a, b, c), plane, line in zip(expert.MODES, expert.density_planes, expert.density_lines, strict=True):
            plane, line = plane.detach(), line.detach()
            # plane[0, r, row=axis b, col=axis a], line[0, r, row=axis c, 0]
            total += sum(float(plane[0, r, v[b], v[a]] * line[0, r, v[c], 0]) for r in range(plane.shape[1]))
        assert got[n].item() == pytest.approx(total, abs=1e-5)


def _reference_hash_encoding(expert: HashGridExpert, x: torch.Tensor) -> torch.Tensor:
    """Instant-NGP's encoding written as a per-point float64 loop with uint32 hashing (independent of the module)."""
    tables = expert.tables.detach().double()
    t = expert.table_size
    out = torch.zeros(len(x), tables.shape[0] * tables.shape[2], dtype=torch.float64)
    for p, point in enumerate(x.double()):
        unit = [min(max((float(c) + 1) / 2, 0.0), 1.0) for c in point]
        feats = []
        for level, res in enumerate(expert.level_res):
            pos = [u * res for u in unit]
            base = [min(math.floor(q), res - 1) for q in pos]
            frac = [q - b for q, b in zip(pos, base, strict=True)]
            acc = torch.zeros(tables.shape[2], dtype=torch.float64)
            for corner in range(8):
                off = [(corner >> axis) & 1 for axis in range(3)]
                v = [b + o for b, o in zip(base, off, strict=True)]
                w = math.prod(f if o else 1 - f for f, o in zip(frac, off, strict=True))
                if (res + 1) ** 3 <= t:
                    slot = v[0] + (res + 1) * (v[1] + (res + 1) * v[2])
                else:
                    h = (v[0] * 1) ^ ((v[1] * 2654435761) & 0xFFFFFFFF) ^ ((v[2] * 805459861) & 0xFFFFFFFF)
                    slot = (h & 0xFFFFFFFF) % t
                acc += w * tables[level, slot]
            feats.append(acc)
        out[p] = torch.cat(feats)
    return out


def test_hash_encoding_matches_independent_implementation():
    torch.manual_seed(0)
    expert = HashGridExpert(64, AABB, levels=4, features_per_level=2, log2_table_size=10, base_resolution=4)
    with torch.no_grad():
        expert.tables.normal_()
    assert expert.level_res == [4, 10, 25, 64]
    # level 4 has 5^3 = 125 <= 1024 vertices (one-to-one); levels 10, 25, 64 are hashed
    x = torch.rand(40, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.testing.assert_close(expert.encode(x).double(), _reference_hash_encoding(expert, x), rtol=1e-5, atol=1e-5)


def test_level_resolutions_are_geometric():
    res = level_resolutions(16, 2048, 16)
    assert res[0] == 16 and res[-1] == 2048
    growth = (2048 / 16) ** (1 / 15)
    assert all(r == math.floor(16 * growth**level + 1e-6) for level, r in enumerate(res))


TOY = {
    "dvgo": {"feature_dim": 4, "mlp_width": 16},
    "tensorf": {"density_components": 8, "appearance_components": 4, "feature_dim": 6, "mlp_width": 16},
    "ngp": {"levels": 6, "log2_table_size": 12, "base_resolution": 4, "mlp_width": 32},
}
LR = {"dvgo": 0.5, "tensorf": 0.05, "ngp": 0.02}


@pytest.mark.parametrize("backbone", ["dvgo", "tensorf", "ngp"])
def test_each_expert_fits_a_toy_density_field(backbone):
    """Regress raw density onto a smooth field (a ball): error falls 10x and inside/outside is recovered."""
    torch.manual_seed(0)
    expert = make_expert(backbone, 24, AABB, **TOY[backbone])
    gen = torch.Generator().manual_seed(0)

    def field(x: torch.Tensor) -> torch.Tensor:
        return 4 * torch.tanh(6 * (0.5 - (x - torch.tensor([0.2, -0.1, 0.0])).norm(dim=-1)))

    opt = torch.optim.Adam(
        [{"params": expert.grid_parameters(), "lr": LR[backbone]}, {"params": expert.mlp_parameters(), "lr": 1e-2}]
    )
    test_x = torch.rand(2000, 3, generator=gen) * 2 - 1
    before = torch.nn.functional.mse_loss(expert.density(test_x), field(test_x)).item()
    for _ in range(200):
        x = torch.rand(2048, 3, generator=gen) * 2 - 1
        loss = torch.nn.functional.mse_loss(expert.density(x), field(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = expert.density(test_x)
        after = torch.nn.functional.mse_loss(pred, field(test_x)).item()
        agree = ((pred > 0) == (field(test_x) > 0)).float().mean().item()
    assert after < before / 10, (before, after)
    assert agree > 0.95
    rgb, raw = expert(test_x[:10], torch.nn.functional.normalize(torch.randn(10, 3), dim=-1))
    assert rgb.shape == (10, 3) and raw.shape == (10,) and ((rgb > 0) & (rgb < 1)).all()


@pytest.mark.parametrize("backbone", ["dvgo", "tensorf", "ngp"])
def test_experts_accept_an_empty_batch(backbone):
    """A batch whose every sample was filtered out: empty outputs, not a reshape error."""
    expert = make_expert(backbone, 8, AABB)
    rgb, raw = expert(torch.zeros(0, 3), torch.zeros(0, 3))
    assert rgb.shape == (0, 3) and raw.shape == (0,)
