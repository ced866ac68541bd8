"""Independent CPU experiments side by side: one single-threaded process per core.

The CPU analogues train small networks whose ops gain little from intra-op threads (and lose to spin-waiting on a
shared machine). Seeds and variants are independent experiments, so the cores torch was given are better spent on
separate single-threaded processes. Each job seeds itself and runs with one thread either way, so its result does not
depend on how many run beside it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import TypeVar

import torch

#: Overrides the number of worker processes (1 runs every job in the calling process).
JOBS_ENV = "REPROKIT_JOBS"

T = TypeVar("T")


def cpu_workers(n_jobs: int) -> int:
    """Processes for ``n_jobs`` independent CPU jobs: ``$REPROKIT_JOBS``, else one per torch thread, at most ``n_jobs``.

    ``torch.get_num_threads()`` follows ``OMP_NUM_THREADS``, so a run limited to one core stays in one process.
    """
    env = os.environ.get(JOBS_ENV)
    wanted = int(env) if env else torch.get_num_threads()
    return max(1, min(wanted, n_jobs))


def _single_thread() -> None:
    torch.set_num_threads(1)


def run_jobs(jobs: Sequence[Callable[[], T]], workers: int) -> list[T]:
    """Call every job and return the results in the order of ``jobs``.

    Args:
        jobs: Picklable zero-argument callables (``functools.partial`` of module-level functions). Put the longest
            first: the pool hands them out in order.
        workers: Processes; with 1 the jobs run here, one after the other, with torch's current thread count.

    Returns:
        ``[job() for job in jobs]``. The first exception of a job is raised here.
    """
    if workers <= 1 or len(jobs) <= 1:
        return [job() for job in jobs]
    # spawn, not fork: a forked child inherits the parent's OpenMP and autograd thread pools in an undefined state.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_single_thread) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [future.result() for future in futures]
