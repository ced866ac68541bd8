"""Level sizes, iterative masking and its nesting invariants, enhancement sets, fade-in, level sampling."""

import itertools
import math

import pytest
import torch
from gode.levels import (
    assign_levels,
    enhancement_masks,
    fade_opacities,
    gradient_importance,
    level_mask,
    level_sizes,
    sample_level,
)


def test_level_sizes_geometric_from_min_to_max_fraction():
    sizes = level_sizes(num=1000, num_levels=4, min_size=10, max_fraction=0.8)
    assert sizes[0] == 10 and sizes[-1] == 800
    # ratio b = (800 / 10)^(1/3) = 4.3089
    b = 80 ** (1 / 3)
    assert sizes == [10, round(10 * b), round(10 * b * b), 800]


def test_level_sizes_paper_setting():
    # 8 levels from 100k to 0.75 N, as in GoDe's Mip-NeRF360 runs
    sizes = level_sizes(num=3_330_000, num_levels=8, min_size=100_000, max_fraction=0.75)
    assert len(sizes) == 8 and sizes[0] == 100_000 and sizes[-1] == 2_497_500
    ratios = [b / a for a, b in itertools.pairwise(sizes)]
    assert max(ratios) - min(ratios) < 1e-3


def test_level_sizes_rejects_impossible_settings():
    with pytest.raises(ValueError):
        level_sizes(num=100, num_levels=3, min_size=80, max_fraction=0.5)


def test_assign_levels_with_fixed_scores_is_a_ranking():
    # With scores that ignore the mask, iterative masking reduces to ranking by score.
    scores = torch.tensor([5.0, 1.0, 9.0, 3.0, 7.0, 0.5, 8.0, 2.0])
    level_of = assign_levels(lambda active: scores, 8, [2, 4, 6])
    # ranks: 9(i2) 8(i6) | 7(i4) 5(i0) | 3(i3) 2(i7) | 1(i1) 0.5(i5) pruned
    assert level_of.tolist() == [1, -1, 0, 2, 1, -1, 0, 2]


def test_assign_levels_rescores_with_the_current_mask_and_levels_nest():
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(50, generator=gen)
    calls = []

    def importance(active):
        calls.append(active.clone())
        # Importance depends on which others are active (as gradients do): a Gaussian gains from inactive neighbours.
        neighbours = torch.roll(~active, 1).float()
        return torch.where(active, base + 0.3 * neighbours, torch.zeros_like(base))

    sizes = [5, 12, 25, 40]
    level_of = assign_levels(importance, 50, sizes)
    assert len(calls) == 4 and calls[0].all()
    for lvl, size in enumerate(sizes):
        assert int(level_mask(level_of, lvl).sum()) == size
    for lvl in range(1, 4):  # nesting: G_{l-1} ⊂ G_l
        assert (level_mask(level_of, lvl - 1) <= level_mask(level_of, lvl)).all()
    # each pass only sees the previous level as active
    for lvl, mask in zip((2, 1, 0), calls[1:]):
        assert torch.equal(mask, level_mask(level_of, lvl + 1))


def test_enhancement_sets_partition_the_top_level():
    level_of = torch.tensor([0, 2, -1, 1, 0, 2, 1, -1, 3])
    sets = enhancement_masks(level_of, 4)
    stacked = torch.stack(sets).int()
    assert (stacked.sum(0) == (level_of >= 0).int()).all()  # disjoint, cover G_{L-1}
    for lvl, e in enumerate(sets):
        assert torch.equal(e, level_of == lvl)
        prev = level_mask(level_of, lvl - 1) if lvl else torch.zeros_like(e)
        assert torch.equal(e, level_mask(level_of, lvl) ^ prev)


def test_fade_scales_only_the_newest_level():
    opac = torch.tensor([0.5, 0.8, 0.6, 0.9])
    level_of = torch.tensor([0, 1, 2, -1])
    out = fade_opacities(opac, level_of, level=1, fade=0.25)
    torch.testing.assert_close(out, torch.tensor([0.5, 0.2, 0.0, 0.0]))


def test_sample_level_distribution():
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample_level(4, "linear", gen) for _ in range(4000)])
    freq = torch.bincount(draws, minlength=4).float() / 4000
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.03, rtol=0)
    uniform = torch.tensor([sample_level(3, "uniform", gen) for _ in range(3000)])
    assert set(uniform.tolist()) == {0, 1, 2}


def test_gradient_importance_sums_per_gaussian_norms():
    grads = {"a": torch.tensor([[3.0, 4.0], [0.0, 0.0]]), "b": torch.tensor([[[1.0]], [[-2.0]]])}
    torch.testing.assert_close(gradient_importance(grads), torch.tensor([6.0, 2.0]))


def test_means_schedule_restarts_and_survives_a_checkpoint():
    from gode.lightning_module import MeansSchedule

    schedule = MeansSchedule(total=100, final_ratio=0.01)
    # exp((1 - t) log 1 + t log 0.01): 0.1 half way, 0.01 at and after the end
    assert math.isclose(schedule(50), 0.1, rel_tol=1e-9) and math.isclose(schedule(400), 0.01, rel_tol=1e-9)
    schedule.restart(step=120, total=40)
    assert math.isclose(schedule(119), 0.01, rel_tol=1e-9)  # before the restart: the first decay
    assert schedule(120) == 1.0 and math.isclose(schedule(140), 0.1, rel_tol=1e-9)
    # LambdaLR checkpoints a callable object's attributes: a fresh scheduler loading them keeps the restart.
    param = torch.nn.Parameter(torch.zeros(1))
    sched = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([param], lr=2.0), [schedule])
    fresh = MeansSchedule(total=100, final_ratio=0.01)
    other = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([param], lr=2.0), [fresh])
    other.load_state_dict(sched.state_dict())
    assert fresh.restart_step == 120 and math.isclose(fresh(140), 0.1, rel_tol=1e-9)
