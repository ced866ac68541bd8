"""Repository-wide pytest setup: offline, quiet, no wandb, runs under a temp folder, one thread per xdist worker."""

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one intra-op thread each avoids oversubscription.
    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _session_caches(tmp_path_factory):
    """Package caches (generated phantoms, rendered scenes) live in one temp folder per test session."""
    root = tmp_path_factory.mktemp("caches")
    for var in ("LUNG_SEG_CACHE", "REPROKIT_CACHE"):
        os.environ.setdefault(var, str(root / var.lower()))


@pytest.fixture(autouse=True)
def _isolated_runs(tmp_path, monkeypatch):
    """Every test writes runs/ and results/ under its own temp folder, never into the checkout."""
    monkeypatch.setenv("REPROKIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("REPROKIT_BENCH_RESULTS", str(tmp_path / "bench"))


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests without CUDA (they are also deselected by the default marker expression)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
