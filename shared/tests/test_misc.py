import random
from pathlib import Path

import numpy as np
import pytest
import torch
from reprokit.bench import PeakMemory, paired_ab, time_fn, write_bench
from reprokit.callbacks import RNGStateCallback
from reprokit.cli import ReproError, user_error
from reprokit.data import DatasetNotFoundError
from reprokit.devices import cuda_kernels_available
from reprokit.plotting import figure, save_png


def test_cuda_guard(monkeypatch):
    assert cuda_kernels_available() == torch.cuda.is_available()
    monkeypatch.setenv("REPROKIT_DISABLE_CUDA_KERNELS", "1")
    assert not cuda_kernels_available()


def test_peak_memory_sees_a_large_allocation():
    with PeakMemory() as small:
        torch.zeros(10)
    with PeakMemory() as big:
        x = torch.ones(64 * 2**20 // 4 * 4)  # 256 MiB of float32, touched
        del x
    assert big.peak_rss_mb - small.peak_rss_mb > 200


def test_time_fn_and_paired_ab_structure():
    calls = []
    timing = time_fn(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5 and len(timing.times_s) == 3 and timing.median_s >= 0
    res = paired_ab(lambda: None, lambda: None, pairs=4, warmup=0)
    assert len(res.ratios) == 4
    assert res.ratios == [b / a for a, b in zip(res.a.times_s, res.b.times_s)]


def test_write_bench(tmp_path):
    path = write_bench("demo", {"ratio": 2.0})
    assert path.parent == tmp_path / "bench" and '"ratio": 2.0' in path.read_text()


def test_save_png(tmp_path: Path):
    fig, ax = figure()
    ax[0, 0].plot([0, 1], [1, 0])
    path = save_png(fig, tmp_path / "f" / "x.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]


def test_rng_state_callback_round_trip():
    cb = RNGStateCallback()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = cb.state_dict()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    cb2 = RNGStateCallback()
    cb2.load_state_dict(state)
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    cb2.on_train_start(None, None)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_user_error_walks_the_cause_chain():
    inner = DatasetNotFoundError("X", "/nope", "somewhere")
    try:
        try:
            raise inner
        except DatasetNotFoundError as e:
            raise ValueError("wrapped by a parser") from e
    except ValueError as outer:
        assert user_error(outer) is inner
    assert user_error(RuntimeError("bug")) is None
    err = ReproError("bad")
    assert user_error(err) is err


@pytest.mark.gpu
def test_cuda_guard_on_gpu():
    assert cuda_kernels_available()
