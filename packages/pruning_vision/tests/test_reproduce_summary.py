"""The multi-seed summary and figure of the sweep driver, with metrics a seed could not compute (NaN)."""

import math

from pruning_vision.reproduce import _nan_mean_std, plot, summarise


def _per_seed() -> dict[int, list[dict]]:
    nan = float("nan")
    return {
        0: [
            {"round": 0, "sparsity": 0.0, "acc": 0.5, "ec/clean": nan},
            {"round": 1, "sparsity": 0.2, "acc": 0.7, "ec/clean": 0.4},
            {"round": 2, "sparsity": 0.36, "acc": 0.6, "ec/clean": 0.2},
        ],
        1: [
            {"round": 0, "sparsity": 0.0, "acc": 0.7, "ec/clean": nan},
            {"round": 1, "sparsity": 0.2, "acc": 0.9, "ec/clean": nan},
            {"round": 2, "sparsity": 0.36, "acc": 0.6, "ec/clean": 0.6},
        ],
    }


def test_nan_mean_std_ignores_nan() -> None:
    mean, std = _nan_mean_std((1.0, float("nan"), 3.0))
    assert (mean, std) == (2.0, 1.0)
    assert _nan_mean_std((4.0,)) == (4.0, 0.0)
    assert all(math.isnan(v) for v in _nan_mean_std((float("nan"), float("nan"))))


def test_two_seed_summary_and_plot_with_nan(tmp_path) -> None:
    per_seed = _per_seed()
    metrics, rows = summarise("cnn", per_seed)
    # seed means of accuracy: 0.6, 0.8, 0.6 -> the sweet spot is round 1 at 20 % sparsity
    assert math.isclose(metrics["cnn.acc.round1"], 0.8)
    assert {r["metric"] for r in rows} == {"acc", "ec/clean"}
    path = plot("cnn", per_seed, tmp_path, "offline digits")
    assert path.is_file() and path.stat().st_size > 0
