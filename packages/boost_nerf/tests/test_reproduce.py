"""The protocol runner: how many processes the backbones run in."""

from __future__ import annotations

import json

import torch
from boost_nerf import reproduce


def test_parallel_jobs_one_process_per_thread_on_cpu_capped_by_backbones(monkeypatch):
    monkeypatch.delenv("BOOST_NERF_JOBS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert reproduce.parallel_jobs(3, "cpu") == 2
    assert reproduce.parallel_jobs(1, "cpu") == 1  # --quick: one backbone, runs in this process
    assert reproduce.parallel_jobs(3, "paper") == 1  # one GPU: sequential
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert reproduce.parallel_jobs(3, "cpu") == 1  # `heavy -1`, OMP_NUM_THREADS=1: sequential
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert reproduce.parallel_jobs(3, "cpu") == 3
    monkeypatch.setenv("BOOST_NERF_JOBS", "1")
    assert reproduce.parallel_jobs(3, "cpu") == 1
    monkeypatch.setenv("BOOST_NERF_JOBS", "8")
    assert reproduce.parallel_jobs(3, "paper") == 3


def test_sequential_run_keeps_backbone_order_and_writes_after_each(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOST_NERF_JOBS", "1")
    calls, written = [], []

    def fake_backbone(backbone, scale, quick, out, data_dir, seed, dataset="offline"):
        calls.append(backbone)
        metrics = {f"{backbone}.{m}.psnr": 20.0 for m in ("baseline", *reproduce.MODES)}
        return [{"backbone": backbone}], metrics, {}

    monkeypatch.setattr(reproduce, "run_backbone", fake_backbone)
    monkeypatch.setattr(reproduce, "_figures", lambda *a, **k: None)
    monkeypatch.setattr(reproduce, "_write_table", lambda name, out, sc, q, data, rows, *a: written.append(len(rows)))
    monkeypatch.setattr(reproduce, "print_check", lambda *a, **k: None)
    reproduce.run("cpu", False, tmp_path / "out")
    assert calls == list(reproduce.FULL_CPU["backbones"])
    assert written == [1, 2, 3]
    timing = json.loads((tmp_path / "out" / "timing.json").read_text())
    assert timing["processes"] == 1 and set(timing["backbones"]) == {f"procedural/{b}" for b in calls}
