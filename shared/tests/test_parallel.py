import functools
import os

import pytest
import torch
from reprokit.parallel import JOBS_ENV, cpu_workers, run_jobs

# Jobs are builtins: a spawned worker must unpickle them by reference, and test modules are not importable there.


def test_cpu_workers(monkeypatch):
    monkeypatch.setenv(JOBS_ENV, "3")
    assert cpu_workers(10) == 3
    assert cpu_workers(2) == 2
    monkeypatch.setenv(JOBS_ENV, "0")
    assert cpu_workers(5) == 1
    monkeypatch.delenv(JOBS_ENV)
    assert cpu_workers(100) == max(1, torch.get_num_threads())


def test_run_jobs_order_results_and_processes():
    powers = [functools.partial(pow, base, 2) for base in (3, 1, 2, 5)]
    assert run_jobs([*powers, os.getpid], workers=1) == [9, 1, 4, 25, os.getpid()]
    *results, pid_a, pid_b, threads = run_jobs([*powers, os.getpid, os.getpid, torch.get_num_threads], workers=2)
    assert results == [9, 1, 4, 25]  # same results, in the order of the jobs
    assert os.getpid() not in (pid_a, pid_b)  # really ran in worker processes
    assert threads == 1  # one thread each


def test_run_jobs_raises():
    with pytest.raises(ValueError, match="invalid literal"):
        run_jobs([functools.partial(int, "x"), os.getpid], workers=2)
