"""FLOPs per frame: the torch FLOP counter against a count of the points each part of the model evaluated."""

from __future__ import annotations

import itertools

import pytest
import torch
from boost_nerf.experts import make_expert
from boost_nerf.gate import NeRFGate
from boost_nerf.metrics import count_flops
from boost_nerf.moe import BoostNeRF

AABB = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)
KWARGS = {
    "dvgo": {"feature_dim": 4, "mlp_width": 16},
    "tensorf": {"density_components": 2, "appearance_components": 3, "feature_dim": 5, "mlp_width": 16},
    "ngp": {"levels": 3, "log2_table_size": 8, "base_resolution": 4, "mlp_width": 16, "geo_feature_dim": 7},
}


def _model(backbone: str, mode: str, k: int) -> BoostNeRF:
    torch.manual_seed(0)
    resolutions = (6, 8, 10) if mode != "single" else (10,)
    experts = [make_expert(backbone, r, AABB, **KWARGS[backbone]) for r in resolutions]
    gate = None
    if mode != "single":
        gate = NeRFGate(len(experts), 5, AABB, experts[0].feature_dim, hidden=12)
        with torch.no_grad():  # spread the routing so that every expert gets points
            gate.grid.normal_(0, 3)
            gate.mlp[0].weight.normal_(0, 1)
            gate.mlp[-1].weight.normal_(0, 2)
    return BoostNeRF(experts, gate, mode, k, AABB, occupancy_resolution=8)


def _rays(n: int = 64):
    gen = torch.Generator().manual_seed(3)
    dirs = torch.nn.functional.normalize(
        torch.randn(n, 3, generator=gen) * 0.2 + torch.tensor([0.0, 0.0, -1.0]), dim=-1
    )
    origins = torch.tensor([0.0, 0.0, 3.0]) + 0.3 * torch.randn(n, 3, generator=gen) * torch.tensor([1.0, 1.0, 0.0])
    return origins, dirs


def _hand_linear(widths: list[int]) -> int:
    """2 * in * out summed over consecutive layer widths."""
    return sum(2 * a * b for a, b in itertools.pairwise(widths))


@pytest.mark.parametrize("backbone", ["dvgo", "tensorf", "ngp"])
@pytest.mark.parametrize(("mode", "k"), [("single", 1), ("topk", 1), ("topk", 2), ("ensemble", 3)])
def test_counted_flops_equal_points_times_per_point_cost(backbone, mode, k):
    """Sparse dispatch is what the counter sees: expert i costs counts[i] x its per-point MLP cost, nothing more."""
    model = _model(backbone, mode, k)
    origins, dirs = _rays()
    with torch.no_grad():
        counted, out = count_flops(model.render_rays, origins, dirs)
    points, counts = int(out["points"]), out["counts"]
    assert points > 50
    if mode == "topk":
        assert int(counts.sum()) == k * points  # every kept point is routed to exactly k experts
        assert (counts > 0).all()
    elif mode == "ensemble":
        assert counts.tolist() == [points] * 3
    # Per-point costs written out from the layer widths (not from the modules' own bookkeeping).
    enc = 3 + 6 * 4
    per_expert = {
        "dvgo": _hand_linear([4 + enc, 16, 16, 3]),
        "tensorf": 2 * 9 * 5 + _hand_linear([5 + enc, 16, 16, 3]),
        "ngp": _hand_linear([6, 16, 8]) + _hand_linear([7 + enc, 16, 16, 3]),
    }[backbone]
    filter_cost = _hand_linear([6, 16, 8]) if backbone == "ngp" else 0
    gate_cost = _hand_linear([features_dim(backbone) + enc, 12, 3]) if mode != "single" else 0
    expected = int(out["candidates"]) * filter_cost + points * gate_cost + int(counts.sum()) * per_expert
    assert counted == expected
    assert model.matmul_flops(counts, points, int(out["candidates"]))["total"] == expected


def features_dim(backbone: str) -> int:
    """Gate grid channels = the expert's feature width."""
    return {"dvgo": 4, "tensorf": 5, "ngp": 6}[backbone]


def test_top1_counts_fewer_expert_flops_than_ensemble_by_the_routing_ratio():
    """Same filter and gate, expert FLOPs scale with the points routed: k / M of the ensemble's."""
    origins, dirs = _rays()
    flops = {}
    for mode, k in (("topk", 1), ("topk", 2), ("ensemble", 3)):
        model = _model("dvgo", mode, k)
        with torch.no_grad():
            _, out = count_flops(model.render_rays, origins, dirs)
        flops[k] = model.matmul_flops(out["counts"], int(out["points"]), int(out["candidates"]))
    assert flops[1]["gate"] == flops[2]["gate"] == flops[3]["gate"]
    assert flops[1]["experts"] * 3 == flops[3]["experts"]
    assert flops[2]["experts"] * 3 == flops[3]["experts"] * 2
