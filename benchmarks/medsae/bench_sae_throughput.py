"""SAE training throughput (embeddings/s) and peak memory per variant: medsae vs SAELens on the same activations.

Each training step is what a trainer does per batch: forward, loss, backward, the decoder-norm handling, an Adam
step. SAELens (``sae-lens`` on PyPI) runs its own ``training_forward_pass`` plus the gradient clipping and optimiser
step of its ``SAETrainer``; its bookkeeping (dead-latent counters, logging) is left out, ours (firing counters) is in.
Without SAELens installed the baseline is a straightforward reference SAE (nn.Linear layers, decoder renormalised
inside every forward), so the script always runs. Ratios > 1 mean medsae is faster. Run:

    OMP_NUM_THREADS=2 python benchmarks/medsae/bench_sae_throughput.py [--quick]
"""

from __future__ import annotations

import argparse

import torch
from medsae.sae import TopKSAE, make_sae
from reprokit.bench import paired_ab, torch_threads, write_bench
from torch import nn
from torch.nn import functional as F


def activations(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Embedding-like activations: sparse combinations of 4d random unit directions, centred, E|x|^2 = d."""
    gen = torch.Generator().manual_seed(seed)
    atoms = F.normalize(torch.randn(4 * d, d, generator=gen), dim=1)
    codes = torch.rand(n, 4 * d, generator=gen) * (torch.rand(n, 4 * d, generator=gen) < 0.02)
    x = codes @ atoms + 0.05 * torch.randn(n, d, generator=gen)
    x = x - x.mean(0)
    return x * (d / x.pow(2).sum(1).mean()).sqrt()


def medsae_step(variant: str, d: int, m: int, k: int):
    sae = make_sae(variant, d, m, k=k, l1_coeff=1.0)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4)
    since_fired = torch.zeros(m, dtype=torch.long)

    def step(x: torch.Tensor) -> None:
        dead = since_fired >= 1000
        out = sae.loss(x, dead=dead if isinstance(sae, TopKSAE) else None)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        sae.remove_parallel_grad()
        opt.step()
        sae.normalise_atoms()
        since_fired.add_(1).masked_fill_((out["f"] != 0).any(0), 0)

    return step


def saelens_step(variant: str, d: int, m: int, k: int):
    import sae_lens as sl
    from sae_lens.saes.sae import TrainStepInput

    if variant in ("standard", "april"):
        sae = sl.StandardTrainingSAE(sl.StandardTrainingSAEConfig(d_in=d, d_sae=m, l1_coefficient=1.0))
    elif variant == "topk":
        sae = sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(d_in=d, d_sae=m, k=k))
    elif variant == "batchtopk":
        sae = sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(d_in=d, d_sae=m, k=k))
    else:
        widths = [m // 16, m // 4, m]
        sae = sl.MatryoshkaBatchTopKTrainingSAE(
            sl.MatryoshkaBatchTopKTrainingSAEConfig(d_in=d, d_sae=m, k=k, matryoshka_widths=widths)
        )
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4)
    coeffs = {name: getattr(c, "value", c) for name, c in sae.get_coefficients().items()}
    dead = torch.zeros(m, dtype=torch.bool)

    def step(x: torch.Tensor) -> None:
        out = sae.training_forward_pass(TrainStepInput(x, coeffs, dead, 1, False))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return step


class ReferenceSAE(nn.Module):
    """The straightforward way: two nn.Linear layers, decoder columns normalised inside every forward."""

    def __init__(self, d: int, m: int, k: int | None):
        super().__init__()
        self.enc, self.dec, self.k = nn.Linear(d, m), nn.Linear(m, d), k

    def forward(self, x):
        pre = F.relu(self.enc(x - self.dec.bias))
        if self.k is None:
            f = pre
        else:
            vals, idx = pre.topk(self.k, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, idx, vals)
        w = self.dec.weight / self.dec.weight.norm(dim=0, keepdim=True)
        return F.linear(f, w, self.dec.bias), f


def reference_step(variant: str, d: int, m: int, k: int):
    sae = ReferenceSAE(d, m, None if variant in ("standard", "april") else k)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4)

    def step(x: torch.Tensor) -> None:
        x_hat, f = sae(x)
        loss = (x - x_hat).pow(2).sum(-1).mean() + (f.abs().sum(-1).mean() if sae.k is None else 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller dictionary and fewer steps")
    args = parser.parse_args()
    d, m, k, batch = (512, 2048, 32, 512) if args.quick else (512, 8192, 64, 1024)
    steps = 3 if args.quick else 8
    try:
        import sae_lens

        baseline, make_baseline = f"SAELens {sae_lens.__version__}", saelens_step
    except ImportError:
        baseline, make_baseline = "reference SAE (SAELens not installed)", reference_step
    x = activations(steps * batch, d)
    batches = x.split(batch)
    results = {}
    print(f"d={d} latents={m} k={k} batch={batch}; baseline: {baseline}; ratio = baseline time / medsae time")
    with torch_threads(max(1, torch.get_num_threads())):
        for variant in ("standard", "april", "topk", "batchtopk", "matryoshka"):
            ours, theirs = medsae_step(variant, d, m, k), make_baseline(variant, d, m, k)

            def run(step):
                return lambda: [step(b) for b in batches]

            res = paired_ab(run(ours), run(theirs), pairs=3, warmup=1)
            n = steps * batch
            results[variant] = {
                **res.as_dict(),
                "medsae_embeddings_per_s": n / res.a.median_s,
                "baseline_embeddings_per_s": n / res.b.median_s,
            }
            print(
                f"{variant:11s} medsae {n / res.a.median_s:9.0f} emb/s  baseline {n / res.b.median_s:9.0f} emb/s  "
                f"ratio {res.median_ratio:5.2f}  peak RSS {res.a.peak_rss_mb:.0f} vs {res.b.peak_rss_mb:.0f} MiB"
            )
    path = write_bench(
        "medsae_sae_throughput",
        {"baseline": baseline, "d_in": d, "d_sae": m, "k": k, "batch": batch, "steps": steps, "results": results},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
