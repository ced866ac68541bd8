"""Inference latency of the paper's one-step multi-t reconstruction vs AnoDDPM's full partial reverse chain.

Both use the same trained-size network (the CPU config's conditional UNet, 32 px); weights do not change the cost.
Measured in one run, alternately (reprokit.bench.paired_ab): per slice (batch 1) and per volume (20 slices, one
batch). Also the training-step time of the conditioned model vs the unconditional one (the conditioning overhead).

    OMP_NUM_THREADS=2 python benchmarks/ca_diffusion_uad/bench_inference.py
"""

from __future__ import annotations

import torch
from ca_diffusion_uad.lightning_module import DiffusionUAD
from reprokit.bench import paired_ab, write_bench

KW = dict(
    image_size=32, channels=(16, 32, 32), attention=(False, False, True), encoder_widths=(16, 32, 64), cond_dim=64
)


def main() -> None:
    torch.manual_seed(0)
    cond = DiffusionUAD(condition="encoder", chain_steps=251, **KW).eval()
    uncond = DiffusionUAD(condition="none", chain_steps=251, **KW).eval()
    gen = torch.Generator().manual_seed(0)

    def recon(model, scheme, x):
        model.hparams.inference = scheme
        return lambda: model.reconstruct(x, gen)

    results = {}
    for name, n, pairs, warmup in (("slice", 1, 3, 1), ("volume", 20, 1, 0)):
        x = torch.rand(n, 1, 32, 32)
        ab = paired_ab(recon(cond, "multi_t", x), recon(uncond, "chain", x), pairs=pairs, warmup=warmup)
        results[f"per_{name}"] = ab.as_dict()
        print(
            f"per {name}: one-step multi-t {ab.a.median_s * 1e3:.1f} ms, full chain (251 steps) "
            f"{ab.b.median_s * 1e3:.1f} ms -> chain / multi-t = {ab.median_ratio:.1f}x"
        )

    x = torch.rand(32, 1, 32, 32)
    models = {"cond": DiffusionUAD(condition="encoder", **KW), "uncond": DiffusionUAD(condition="none", **KW)}
    opts = {k: torch.optim.Adam([p for p in m.parameters() if p.requires_grad]) for k, m in models.items()}

    def step(key):
        def run():
            opts[key].zero_grad()
            models[key].denoise_loss(x).backward()
            opts[key].step()

        return run

    ab = paired_ab(step("uncond"), step("cond"), pairs=5)
    results["train_step_batch32"] = ab.as_dict()
    print(
        f"training step (batch 32): unconditional {ab.a.median_s * 1e3:.0f} ms, conditioned (frozen encoder) "
        f"{ab.b.median_s * 1e3:.0f} ms -> cond / uncond = {ab.median_ratio:.2f}x"
    )
    path = write_bench("ca_diffusion_uad_inference", {"threads": torch.get_num_threads(), **results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
