import math

import pytest
import torch
from pruning_vision.alignment import error_consistency, shape_bias, sweet_spot


def test_error_consistency_hand_worked():
    a = torch.tensor([1, 1, 1, 0, 0, 1, 0, 1])
    b = torch.tensor([1, 1, 0, 0, 1, 1, 0, 1])
    # c_obs = 6/8; p_a = p_b = 5/8; c_exp = 25/64 + 9/64 = 34/64; kappa = (48/64 - 34/64) / (30/64) = 14/30
    assert error_consistency(a, b) == pytest.approx(14 / 30)
    assert error_consistency(a, a) == pytest.approx(1.0)
    assert error_consistency(a, 1 - a) < 0


def test_shape_bias():
    pred = torch.tensor([0, 1, 2, 3, 5])
    shape = torch.tensor([0, 1, 9, 9, 9])
    texture = torch.tensor([7, 7, 2, 8, 8])
    assert shape_bias(pred, shape, texture) == pytest.approx(2 / 3)


def test_sweet_spot():
    curves = {0: [0.5, 0.7, 0.6], 1: [0.5, 0.5, 0.8]}
    spot = sweet_spot(curves, [0.0, 0.2, 0.36])
    assert spot["sparsity"] == 0.36 and spot["best"] == pytest.approx(0.7)
    assert spot["dense"] == pytest.approx(0.5) and spot["gain"] == pytest.approx(0.2)
    assert spot["best_std"] == pytest.approx(0.1)
    assert spot["seed_sparsity_std"] == pytest.approx(0.08)


def test_error_consistency_on_a_hand_worked_2x2_table():
    # 100 trials: both right 40, only A right 10, only B right 20, both wrong 30.
    # c_obs = 0.7; p_A = 0.5, p_B = 0.6; c_exp = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4
    a = torch.tensor([1] * 40 + [1] * 10 + [0] * 20 + [0] * 30)
    b = torch.tensor([1] * 40 + [0] * 10 + [1] * 20 + [0] * 30)
    assert error_consistency(a, b) == pytest.approx(0.4)
    assert error_consistency(b, a) == pytest.approx(0.4)


@pytest.mark.parametrize("seed", range(5))
def test_error_consistency_matches_the_2x2_cohen_kappa_formula(seed):
    # Second formulation: kappa = 2 (n11 n00 - n10 n01) / ((n11 + n10)(n10 + n00) + (n11 + n01)(n01 + n00)).
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(300, generator=gen) < 0.6
    b = torch.where(torch.rand(300, generator=gen) < 0.5, a, torch.rand(300, generator=gen) < 0.7)
    n11, n00 = float((a & b).sum()), float((~a & ~b).sum())
    n10, n01 = float((a & ~b).sum()), float((~a & b).sum())
    ref = 2 * (n11 * n00 - n10 * n01) / ((n11 + n10) * (n10 + n00) + (n11 + n01) * (n01 + n00))
    assert error_consistency(a, b) == pytest.approx(ref, abs=1e-12)


def test_shape_bias_ignores_decisions_for_neither_cue():
    # 10 trials: 3 shape decisions, 1 texture decision, 6 other classes -> 3 / (3 + 1)
    shape = torch.arange(10)
    texture = (shape + 1) % 10
    pred = torch.tensor([0, 1, 2, 4, 9, 9, 9, 9, 0, 5])  # shape hits: trials 0-2; texture hit: trial 3 only
    assert shape_bias(pred, shape, texture) == pytest.approx(3 / 4)
    assert shape_bias(texture, shape, texture) == 0.0 and shape_bias(shape, shape, texture) == 1.0
    assert math.isnan(shape_bias(torch.full((10,), 5), torch.zeros(10), torch.ones(10)))
