"""Monosemanticity score: the O(N K d) closed form (medsae.metrics.monosemanticity) vs the explicit O(N^2 K) pair sum.

Both are timed on the same random activations in the same run; the script also reports their largest difference.
Ratios > 1 mean the closed form is faster. Run: ``OMP_NUM_THREADS=2 python benchmarks/medsae/bench_monosemanticity.py``.
"""

from __future__ import annotations

import argparse

import torch
from medsae.metrics import monosemanticity, monosemanticity_pairwise
from reprokit.bench import paired_ab, write_bench


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    k, d = (256, 128) if args.quick else (512, 512)
    sizes = (250, 500, 1000) if args.quick else (500, 1000, 2000, 4000)
    rows = []
    for n in sizes:
        gen = torch.Generator().manual_seed(n)
        a = torch.relu(torch.randn(n, k, generator=gen))
        e = torch.randn(n, d, generator=gen)
        diff = float((monosemanticity(a, e) - monosemanticity_pairwise(a, e)).abs().nan_to_num(0).max())
        res = paired_ab(
            lambda a=a, e=e: monosemanticity(a, e), lambda a=a, e=e: monosemanticity_pairwise(a, e), pairs=3
        )
        rows.append({"n": n, "k": k, "d": d, "max_abs_diff": diff, **res.as_dict()})
        print(
            f"N={n:5d}: closed form {res.a.median_s * 1e3:8.1f} ms, pairwise {res.b.median_s * 1e3:9.1f} ms, "
            f"ratio {res.median_ratio:7.1f}x, max |diff| {diff:.1e}, peak RSS {res.a.peak_rss_mb:.0f} vs "
            f"{res.b.peak_rss_mb:.0f} MiB"
        )
    print(f"wrote {write_bench('medsae_monosemanticity', {'rows': rows})}")


if __name__ == "__main__":
    main()
