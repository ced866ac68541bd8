"""Cost of the FairKL regulariser: a step-2 training step with CE vs CE + FairKL (same batch, same model).

Also times FairKL itself (vectorised over all pairs) against a per-anchor loop computing the same statistics, and
the offline image generator's throughput. Ratios are measured alternately in one run (reprokit.bench.paired_ab).
Run: ``python benchmarks/corsa/bench_fairkl.py``.
"""

from __future__ import annotations

import torch
from corsa.fairkl import fairkl, gaussian_kl
from corsa.model import CovidHead, SmallCNN
from reprokit import cxr
from reprokit.bench import paired_ab, time_fn, torch_threads, write_bench
from torch.nn import functional as F


def fairkl_loop(z: torch.Tensor, y: torch.Tensor, b: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Baseline: the same four distance sets gathered anchor by anchor."""
    zn = F.normalize(z, dim=1)
    sets: dict[tuple[bool, bool], list[torch.Tensor]] = {k: [] for k in ((1, 1), (1, 0), (0, 1), (0, 0))}
    for i in range(len(z)):
        d = ((zn[i] - zn) ** 2).sum(1)
        keep = torch.arange(len(z)) != i
        for pos in (1, 0):
            for ali in (1, 0):
                m = keep & ((y == y[i]) == bool(pos)) & ((b == b[i]) == bool(ali))
                sets[(pos, ali)].append(d[m])
    loss = z.new_zeros(())
    for pos in (1, 0):
        a, c = torch.cat(sets[(pos, 1)]), torch.cat(sets[(pos, 0)])
        loss = loss + gaussian_kl(a.mean(), a.var(unbiased=False) + eps, c.mean(), c.var(unbiased=False) + eps)
    return loss


def main() -> None:
    torch.manual_seed(0)
    batch, size = 128, 64
    enc, head = SmallCNN(16), CovidHead(128, 128)
    params = [*enc.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.01)
    x = torch.randn(batch, 1, size, size)
    y, b = torch.randint(0, 2, (batch,)), torch.randint(0, 4, (batch,))

    def step(lam: float):
        def run():
            opt.zero_grad()
            logits, z = head(enc(x))
            loss = F.cross_entropy(logits, y)
            if lam:
                loss = loss + lam * fairkl(z, y, b)
            loss.backward()
            opt.step()

        return run

    z = torch.randn(256, 128)
    yz, bz = torch.randint(0, 2, (256,)), torch.randint(0, 4, (256,))
    assert torch.allclose(fairkl(z, yz, bz), fairkl_loop(z, yz, bz), rtol=1e-4, atol=1e-5)
    with torch_threads(2):
        train = paired_ab(step(0.0), step(1.0), pairs=5)
        loss = paired_ab(lambda: fairkl(z, yz, bz), lambda: fairkl_loop(z, yz, bz), pairs=5)
        gen = time_fn(lambda: cxr.generate(200, seed=0, size=size), warmup=1, repeats=3)
    payload = {
        "train_step_ce_vs_ce_fairkl": train.as_dict(),
        "fairkl_vectorised_vs_loop_b256": loss.as_dict(),
        "cxr_generate_200_images_64px": {**gen.as_dict(), "images_per_s": 200 / gen.median_s},
        "batch": batch,
        "image_size": size,
    }
    print(f"train step, CE + FairKL / CE (batch {batch}, {size}px): {train.median_ratio:.3f}x")
    print(f"FairKL per-anchor loop / vectorised (batch 256): {loss.median_ratio:.1f}x")
    print(f"reprokit.cxr.generate: {200 / gen.median_s:.0f} images/s at {size}px")
    print(write_bench("corsa_fairkl", payload))


if __name__ == "__main__":
    main()
