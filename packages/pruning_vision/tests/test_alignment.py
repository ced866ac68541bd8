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
