"""Benchmark helpers: warm-up, repeats and medians, peak memory, paired A/B ratios, JSON output.

Absolute times only mean something on the same machine in the same run, so every benchmark here measures its
baseline in the same process and reports ratios; :func:`paired_ab` alternates A and B so that drift in machine load
hits both sides alike.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from reprokit.results import atomic_write_json, git_sha, machine_info

RESULTS_DIR_ENV = "REPROKIT_BENCH_RESULTS"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _read_status_kb(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class PeakMemory:
    """Peak resident memory (and peak CUDA memory) over a block, in MiB.

    Linux keeps the high-water mark of resident memory (VmHWM); writing ``5`` to ``/proc/self/clear_refs`` resets it,
    so the peak of one block can be read without sampling. Where that is not allowed a 2 ms sampling thread stands in.
    """

    def __init__(self) -> None:
        self.peak_rss_mb = float("nan")
        self.peak_cuda_mb = float("nan")
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._sampled_kb = 0

    def __enter__(self) -> PeakMemory:
        self._use_hwm = True
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            self._use_hwm = False
            self._start_sampler()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def _start_sampler(self) -> None:
        def run() -> None:
            while not self._stop.is_set():
                self._sampled_kb = max(self._sampled_kb, _read_status_kb("VmRSS"))
                time.sleep(0.002)

        self._sampler = threading.Thread(target=run, daemon=True)
        self._sampler.start()

    def __exit__(self, *exc: object) -> None:
        _sync()
        if self._use_hwm:
            self.peak_rss_mb = _read_status_kb("VmHWM") / 1024
        else:
            self._stop.set()
            assert self._sampler is not None
            self._sampler.join()
            self.peak_rss_mb = self._sampled_kb / 1024
        if torch.cuda.is_available():
            self.peak_cuda_mb = torch.cuda.max_memory_allocated() / 2**20


@dataclass
class Timing:
    """Wall times of repeated calls (seconds) and the peak memory over them (MiB)."""

    times_s: list[float]
    peak_rss_mb: float
    peak_cuda_mb: float

    @property
    def median_s(self) -> float:
        """Median wall time."""
        return statistics.median(self.times_s)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the median."""
        return {**asdict(self), "median_s": self.median_s}


def time_fn(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    with PeakMemory() as mem:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            _sync()
            times.append(time.perf_counter() - start)
    return Timing(times, mem.peak_rss_mb, mem.peak_cuda_mb)


@dataclass
class PairedResult:
    """A/B timings measured alternately; ``ratios`` are ``time_b / time_a`` per pair (> 1: A is faster)."""

    a: Timing
    b: Timing
    ratios: list[float] = field(default_factory=list)

    @property
    def median_ratio(self) -> float:
        """Median of the per-pair ratios B/A."""
        return statistics.median(self.ratios)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "a": self.a.as_dict(),
            "b": self.b.as_dict(),
            "ratios_b_over_a": self.ratios,
            "median_ratio_b_over_a": self.median_ratio,
        }


def paired_ab(fn_a: Callable[[], Any], fn_b: Callable[[], Any], *, pairs: int = 5, warmup: int = 1) -> PairedResult:
    """Time A and B alternately (A, B, A, B, ...) and return per-pair ratios B/A and each side's peak memory."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    _sync()
    times: dict[str, list[float]] = {"a": [], "b": []}
    rss: dict[str, list[float]] = {"a": [], "b": []}
    cuda: dict[str, list[float]] = {"a": [], "b": []}
    for _ in range(pairs):
        for key, fn in (("a", fn_a), ("b", fn_b)):
            with PeakMemory() as mem:
                start = time.perf_counter()
                fn()
                _sync()
                times[key].append(time.perf_counter() - start)
            rss[key].append(mem.peak_rss_mb)
            cuda[key].append(mem.peak_cuda_mb)
    a, b = (Timing(times[k], _nanmax(rss[k]), _nanmax(cuda[k])) for k in ("a", "b"))
    return PairedResult(a, b, [tb / ta for ta, tb in zip(times["a"], times["b"])])


def _nanmax(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return max(finite) if finite else float("nan")


def results_dir() -> Path:
    """Where benchmark JSON goes: ``$REPROKIT_BENCH_RESULTS`` or ``benchmarks/results``."""
    return Path(os.environ.get(RESULTS_DIR_ENV, "benchmarks/results"))


def write_bench(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` atomically with machine info, git SHA and date."""
    record = {
        "name": name,
        "git_sha": git_sha(),
        "machine": machine_info(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **payload,
    }
    return atomic_write_json(results_dir() / f"{name}.json", record)


@contextmanager
def torch_threads(n: int):
    """Run a block with ``torch.set_num_threads(n)`` and restore the previous count afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
