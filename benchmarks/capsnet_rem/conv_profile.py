"""Where the shared part of the CapsNet training step goes: the two convolutions against this CPU's GEMM rate.

The stem (conv1, 1 -> 256 channels, 9x9) and the primary-capsule convolution (256 -> 256, 9x9, stride 2) are the
same code in both formulations of the routing benchmark, so they bound its whole-step ratio (Amdahl). This script
times each of their passes on their own (forward, input gradient, weight gradient; the image needs no gradient,
so conv1 has none) and reports the achieved GFLOP/s next to a plain GEMM of the primary convolution's im2col shape
(``[B*36, 20736] @ [20736, 256]``, the best a GEMM-based convolution could do here), for the layouts and backends
a user could pick: NCHW and ``channels_last`` with oneDNN (PyTorch's default on CPU), and oneDNN off (im2col +
GEMM inside ATen); and the frequency-domain primary convolution (``capsnet_rem.fftconv``, what
``CapsNet(primary_conv="fft")`` runs; conv1 stays oneDNN NCHW), whose GFLOP/s are "effective": the direct
method's FLOPs over its time.

    python benchmarks/capsnet_rem/conv_profile.py [--threads 2] [--batch 128]
"""

from __future__ import annotations

import argparse
import json

import torch
from capsnet_rem.fftconv import fft_conv2d
from reprokit.bench import time_fn, torch_threads


def _conv_passes(x: torch.Tensor, w: torch.Tensor, stride: int, input_grad: bool, repeats: int) -> dict:
    """Median seconds of forward, input-gradient and weight-gradient passes of ``conv2d(x, w, stride)``."""
    y = torch.nn.functional.conv2d(x, w, stride=stride)
    g = torch.randn_like(y)

    def backward(mask: list[bool]):
        return lambda: torch.ops.aten.convolution_backward(
            g, x, w, [w.shape[0]], [stride] * 2, [0, 0], [1, 1], False, [0, 0], 1, mask
        )

    out = {"forward": time_fn(lambda: torch.nn.functional.conv2d(x, w, stride=stride), repeats=repeats).median_s}
    out["weight_grad"] = time_fn(backward([False, True, True]), repeats=repeats).median_s
    if input_grad:
        out["input_grad"] = time_fn(backward([True, False, False]), repeats=repeats).median_s
    return out


def _fft_passes(x: torch.Tensor, w: torch.Tensor, stride: int, repeats: int) -> dict:
    """Median seconds of the forward, weight-gradient and input-gradient passes of ``fft_conv2d(x, w, stride)``.

    Each backward pass reuses one forward's saved spectra (``retain_graph``), as one training step does.
    """
    with torch.no_grad():
        out = {"forward": time_fn(lambda: fft_conv2d(x, w, stride=stride), repeats=repeats).median_s}
    for name, input_grad in (("weight_grad", False), ("input_grad", True)):
        xx, ww = x.detach().requires_grad_(input_grad), w.detach().requires_grad_(not input_grad)
        y = fft_conv2d(xx, ww, stride=stride)
        g = torch.randn_like(y)
        leaf = xx if input_grad else ww
        out[name] = time_fn(
            lambda y=y, g=g, leaf=leaf: torch.autograd.grad(y, leaf, g, retain_graph=True), repeats=repeats
        ).median_s
    return out


def profile(batch: int = 128, threads: int = 2, repeats: int = 3) -> dict:
    """Times and GFLOP/s of the CapsNet convolutions (fwd and bwd) and of the matching GEMM.

    Returns:
        ``{"gemm_gflops": float, "layouts": {name: {"conv1": {...}, "primary": {...}, "total_s", "gflops"}}}``;
        passes in seconds per batch.
    """
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 1, 28, 28, generator=gen)
    w1 = torch.randn(256, 1, 9, 9, generator=gen) * 0.1
    h = torch.rand(batch, 256, 20, 20, generator=gen)
    w2 = torch.randn(256, 256, 9, 9, generator=gen) * 0.01
    mac1, mac2 = 20 * 20 * 256 * 81, 6 * 6 * 256 * 256 * 81  # per image, forward
    # forward + weight grad of conv1 (no image gradient), forward + input grad + weight grad of the primary conv
    flops = 2 * batch * (2 * mac1 + 3 * mac2)
    out: dict = {"batch": batch, "threads": threads, "gflop_per_step": flops / 1e9, "layouts": {}}
    with torch_threads(threads):
        a = torch.randn(batch * 36, 256 * 81, generator=gen)
        b = torch.randn(256 * 81, 256, generator=gen)
        gemm = time_fn(lambda: torch.mm(a, b), repeats=repeats).median_s
        out["gemm_gflops"] = 2 * a.shape[0] * a.shape[1] * b.shape[1] / gemm / 1e9
        cases = [("oneDNN NCHW", torch.contiguous_format, True), ("oneDNN channels_last", torch.channels_last, True)]
        cases.append(("oneDNN off (ATen im2col + GEMM)", torch.contiguous_format, False))
        for name, fmt, mkldnn in cases:
            with torch.backends.mkldnn.flags(enabled=mkldnn):
                conv1 = _conv_passes(
                    image.to(memory_format=fmt), w1.to(memory_format=fmt), 1, False, repeats if mkldnn else 1
                )
                primary = _conv_passes(
                    h.to(memory_format=fmt), w2.to(memory_format=fmt), 2, True, repeats if mkldnn else 1
                )
            total = sum(conv1.values()) + sum(primary.values())
            out["layouts"][name] = {
                "conv1": conv1,
                "primary": primary,
                "total_s": total,
                "gflops": flops / total / 1e9,
                "primary_gflops": {k: 2 * batch * mac2 / v / 1e9 for k, v in primary.items()},
            }
        conv1 = out["layouts"]["oneDNN NCHW"]["conv1"]
        primary = _fft_passes(h, w2, 2, repeats)
        total = sum(conv1.values()) + sum(primary.values())
        out["layouts"]["fft primary conv (conv1 oneDNN NCHW)"] = {
            "conv1": conv1,
            "primary": primary,
            "total_s": total,
            "gflops": flops / total / 1e9,  # effective: the direct method's FLOPs
            "primary_gflops": {k: 2 * batch * mac2 / v / 1e9 for k, v in primary.items()},
        }
    return out


def report(result: dict) -> None:
    """Print a profile as a few readable lines."""
    print(
        f"conv profile, batch {result['batch']}, {result['threads']} threads: GEMM of the im2col shape "
        f"{result['gemm_gflops']:.0f} GFLOP/s; convolutions {result['gflop_per_step']:.0f} GFLOP per step"
    )
    for name, row in result["layouts"].items():
        passes = ", ".join(f"{k} {v:.0f}" for k, v in row["primary_gflops"].items())
        print(
            f"  {name}: both convs fwd+bwd {row['total_s']:.3f} s = {row['gflops']:.0f} GFLOP/s "
            f"({row['gflops'] / result['gemm_gflops']:.0%} of the GEMM rate); primary conv GFLOP/s: {passes}"
        )


def main() -> None:
    """Profile and print (and dump JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    result = profile(args.batch, args.threads)
    report(result)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
