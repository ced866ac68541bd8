"""SAEmnesia benchmarks (CPU): activation caching and SAE training throughput, and the erasure hook's overhead.

Baselines are measured in the same run: plain sampling vs sampling with the erasure hook (paired, alternating), so
the overhead ratio is meaningful on a shared machine. Target from the issue: < 10% extra time per step.

The hook is timed with the method's own threshold (the latent's mean activation over the sampled tokens, as
``reproduce`` computes it), with threshold 0 (the worst case: every token with a positive pre-activation on the
latent is a candidate) and, for comparison, as the full encode-edit-decode ``D(z') + (x - D(z))``. The FLOPs of
the hook relative to the UNet's per CFG step are counted analytically for this model and for SD1.5 (UNet FLOPs with
torch's FlopCounterMode on a meta-device SD1.5 UNet, so no weights are needed).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import yaml
from diffusers import UNet2DConditionModel
from reprokit.bench import paired_ab, time_fn, torch_threads, write_bench
from reprokit.cli import package_path
from saemnesia.erasure import ConceptEraser, ErasureStack
from saemnesia.hooks import ActivationWriter, capture
from saemnesia.sae import TopKSAE, topk_activation
from saemnesia.tiny_diffusion import SD_BLOCK, TinyTextToImage, make_prompt, noise_schedulers


class FullEraser:
    """The erasure as literally written, ``D(z') + (x - D(z))`` with a TopK over every latent (timing reference)."""

    def __init__(self, eraser: ConceptEraser):
        self.e = eraser

    def __call__(self, module, inputs, output):
        e, sae = self.e, self.e.sae
        b, c, h, w = output[0].shape
        x = output[0].permute(0, 2, 3, 1).reshape(-1, c)
        z = topk_activation(sae.pre_acts(x), sae.k)
        z_l = z[:, e.latents]
        z_new = z.clone()
        z_new[:, e.latents] = torch.where(z_l > e.thresholds, z_l * e.concept_means * e.multiplier, z_l)
        out = sae.decode(z_new) + (x - sae.decode(z))
        return (out.view(b, h, w, c).permute(0, 3, 1, 2).contiguous(), *output[1:])


def hook_flops(tokens: int, d: int, n_latents: int, candidates: float, erased: int = 1) -> dict[str, float]:
    """Analytic FLOPs of one hook call on ``tokens`` tokens (both CFG halves) of width ``d``.

    ``full``: dense encoder + two dense decodes (``D(z')`` and ``D(z)``). ``fast``: the erased latents' columns on
    every token, the full encoder and the rank count on the ``candidates`` share of tokens, and the rank-``erased``
    update ``(z'_L - z_L) W_dec[L]``.
    """
    enc = 2 * tokens * d * n_latents
    fast = 2 * tokens * d * erased + candidates * (enc + tokens * n_latents * erased + 2 * tokens * d * erased)
    return {"full": 3 * enc, "fast": fast, "fast_all_candidates": 2 * tokens * d * erased + enc + tokens * n_latents}


def unet_flops(unet: UNet2DConditionModel, batch: int, context: tuple[int, int]) -> float:
    """FLOPs of one UNet call on ``batch`` latents (counted on the meta device: shapes only, no weights)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = unet.config
    with torch.device("meta"):
        meta = UNet2DConditionModel.from_config(cfg)
        x = torch.empty(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size)
        ctx = torch.empty(batch, *context)
        with FlopCounterMode(display=False) as counter:
            meta(x, 500, encoder_hidden_states=ctx)
    return float(counter.get_total_flops())


def flops_table(
    tiny_unet: UNet2DConditionModel, batch: int, candidates: float, tokens_per_image: int, width: int
) -> dict[str, dict[str, float]]:
    """Hook FLOPs / UNet FLOPs per CFG step for the tiny model (``batch`` prompts) and for SD1.5 (one prompt)."""
    with torch.device("meta"):
        sd15 = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    out = {}
    # SD1.5's up_blocks.1.attentions.1 output: [2, 1280, 16, 16] at 512 px; SAE expansion 16 (20480 latents)
    for name, unet, prompts, ctx, tokens, d, n in (
        ("tiny", tiny_unet, batch, (8, 64), 2 * batch * tokens_per_image, width, 16 * width),
        ("sd15", sd15, 1, (77, 768), 2 * 256, 1280, 20480),
    ):
        u = unet_flops(unet, 2 * prompts, ctx)
        h = hook_flops(tokens, d, n, candidates)
        out[name] = {"unet_gflops": u / 1e9, **{f"hook_{k}_pct": 100 * v / u for k, v in h.items()}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=24, help="prompts per sampling call")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps per sampling call")
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    with torch_threads(args.threads):
        # the CPU reproduction's model and SAE sizes (untrained: timing only)
        arch = yaml.safe_load((package_path("saemnesia", "configs") / "cpu" / "diffusion.yaml").read_text())
        arch = arch["model"]["init_args"]
        model = TinyTextToImage(
            arch["sample_size"], arch["channels"], arch["dim"], arch.get("attention_levels", [0])
        ).eval()
        _, ddim = noise_schedulers()
        prompts = [make_prompt("circle", "ember")] * args.batch
        block = model.unet.get_submodule(SD_BLOCK)
        # the method's threshold: the latent's mean activation over the tokens of a plain sampling run
        with capture(model.unet, SD_BLOCK, half="all") as store:
            model.sample(prompts, ddim, steps=args.steps, seed=0)
        tokens_per_image, width = store[0].shape[1:]
        sae = TopKSAE(width, 16 * width, 8)
        latent = torch.tensor([3])
        with torch.no_grad():
            z_l = torch.cat([topk_activation(sae.pre_acts(t.flatten(0, 1)), sae.k)[:, latent] for t in store])
        mean_act = z_l.mean(0)
        candidates = float((z_l > mean_act).float().mean())
        erasers = {
            "rule": ConceptEraser(sae, latent, mean_act, mean_act, multiplier=-10.0),
            "thr0": ConceptEraser(sae, latent, mean_act, torch.zeros(1), multiplier=-10.0),
        }
        erasers["full"] = FullEraser(erasers["rule"])

        def plain():
            model.sample(prompts, ddim, steps=args.steps, seed=0)

        def hooked(hook):
            def run():
                handle = block.register_forward_hook(hook if isinstance(hook, FullEraser) else ErasureStack([hook]))
                try:
                    model.sample(prompts, ddim, steps=args.steps, seed=0)
                finally:
                    handle.remove()

            return run

        overheads = {name: paired_ab(plain, hooked(e), pairs=args.pairs) for name, e in erasers.items()}

        def cache():
            with tempfile.TemporaryDirectory() as tmp, capture(model.unet, SD_BLOCK) as store:
                model.sample(prompts, ddim, steps=args.steps, seed=0)
                writer = ActivationWriter(Path(tmp))
                for item in store:
                    writer.append(item, torch.zeros(len(item), 3, dtype=torch.long))
                writer.close()

        caching = time_fn(cache, warmup=1, repeats=3)
        cached_tokens = args.batch * args.steps * tokens_per_image
        x = torch.randn(4096, width)
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
    flops = flops_table(model.unet, args.batch, candidates, tokens_per_image, width)
    result = {
        "threads": args.threads,
        "block_tokens_per_image": int(tokens_per_image),
        "block_width": int(width),
        "erasure_overhead_ratio": overheads["rule"].median_ratio,
        "erasure_overhead_pct": 100 * (overheads["rule"].median_ratio - 1),
        "erasure_overhead_thr0_pct": 100 * (overheads["thr0"].median_ratio - 1),
        "erasure_overhead_full_pct": 100 * (overheads["full"].median_ratio - 1),
        "candidate_token_share": candidates,
        "sampling": overheads["rule"].as_dict(),
        "flops": flops,
        "caching_tokens_per_s": cached_tokens / caching.median_s,
        "sae_train_tokens_per_s": 4096 / training.median_s,
        "sae_train_peak_rss_mb": training.peak_rss_mb,
    }
    path = write_bench("saemnesia", result)
    print(
        f"erasure hook overhead per sampling call (median of {args.pairs} paired runs; target < 10%): "
        f"{result['erasure_overhead_pct']:+.1f}% (threshold = mean activation, {candidates:.1%} candidate tokens), "
        f"{result['erasure_overhead_thr0_pct']:+.1f}% (threshold 0), "
        f"{result['erasure_overhead_full_pct']:+.1f}% (full encode-edit-decode)"
    )
    for name, f in flops.items():
        print(
            f"{name}: UNet {f['unet_gflops']:.2f} GFLOPs per CFG step; hook {f['hook_fast_pct']:.3f}% (fast, measured "
            f"candidate share), {f['hook_fast_all_candidates_pct']:.2f}% (fast, every token a candidate), "
            f"{f['hook_full_pct']:.2f}% (full encode-edit-decode)"
        )
    print(f"activation caching: {result['caching_tokens_per_s']:.0f} tokens/s (sampling included)")
    print(
        f"SAE training (d={width}, {16 * width} latents, k=8, 4096-token batches): "
        f"{result['sae_train_tokens_per_s']:.0f} tokens/s"
    )
    print(f"-> {path}")


if __name__ == "__main__":
    main()
