"""SAEmnesia benchmarks (CPU): activation caching and SAE training throughput, and the erasure hook's overhead.

Baselines are measured in the same run: plain sampling vs sampling with the erasure hook (paired, alternating), so
the overhead ratio is meaningful on a shared machine. Target from the issue: < 10% extra time per step.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from reprokit.bench import paired_ab, time_fn, torch_threads, write_bench
from saemnesia.erasure import ConceptEraser, ErasureStack
from saemnesia.hooks import ActivationWriter, capture
from saemnesia.sae import TopKSAE
from saemnesia.tiny_diffusion import SD_BLOCK, TinyTextToImage, make_prompt, noise_schedulers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=24, help="prompts per sampling call")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps per sampling call")
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    with torch_threads(args.threads):
        model = TinyTextToImage().eval()
        _, ddim = noise_schedulers()
        prompts = [make_prompt("circle", "ember")] * args.batch
        sae = TopKSAE(32, 512, 8)
        eraser = ConceptEraser(sae, torch.tensor([3]), torch.ones(1), torch.zeros(1), multiplier=-10.0)
        block = model.unet.get_submodule(SD_BLOCK)

        def plain():
            model.sample(prompts, ddim, steps=args.steps, seed=0)

        def erased():
            handle = block.register_forward_hook(ErasureStack([eraser]))
            try:
                model.sample(prompts, ddim, steps=args.steps, seed=0)
            finally:
                handle.remove()

        overhead = paired_ab(plain, erased, pairs=args.pairs)

        def cache():
            with tempfile.TemporaryDirectory() as tmp, capture(model.unet, SD_BLOCK) as store:
                model.sample(prompts, ddim, steps=args.steps, seed=0)
                writer = ActivationWriter(Path(tmp))
                for item in store:
                    writer.append(item, torch.zeros(len(item), 3, dtype=torch.long))
                writer.close()

        caching = time_fn(cache, warmup=1, repeats=3)
        cached_tokens = args.batch * args.steps * 16 * 16
        x = torch.randn(4096, 32)
        opt = torch.optim.Adam(sae.parameters(), lr=4e-4)

        def sae_step():
            x_hat, _, pre = sae(x, batch_topk=True)
            loss = (x_hat - x).pow(2).mean() + sae.auxk_loss(x, x_hat, pre) / 32
            opt.zero_grad()
            loss.backward()
            sae.remove_parallel_grad()
            opt.step()
            sae.normalize_decoder()

        training = time_fn(sae_step, warmup=2, repeats=10)
    result = {
        "threads": args.threads,
        "erasure_overhead_ratio": overhead.median_ratio,
        "erasure_overhead_pct": 100 * (overhead.median_ratio - 1),
        "sampling": overhead.as_dict(),
        "caching_tokens_per_s": cached_tokens / caching.median_s,
        "sae_train_tokens_per_s": 4096 / training.median_s,
        "sae_train_peak_rss_mb": training.peak_rss_mb,
    }
    path = write_bench("saemnesia", result)
    print(
        f"erasure hook overhead: {result['erasure_overhead_pct']:+.1f}% per sampling call "
        f"(median of {args.pairs} paired runs; target < 10%)"
    )
    print(f"activation caching: {result['caching_tokens_per_s']:.0f} tokens/s (sampling included)")
    print(f"SAE training (d=32, 512 latents, k=8, 4096-token batches): {result['sae_train_tokens_per_s']:.0f} tokens/s")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
