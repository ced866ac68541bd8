"""Does ``torch.compile`` speed up the Sabour CapsNet training step on this CPU, and how long does it compile?

Eager against ``torch.compile(net)`` (inductor, default mode) on the same weights and batch: compile time (first
call), median step time (forward, margin + reconstruction loss, backward), and the largest difference of the class
capsule lengths and of the primary convolution's weight gradient.

    python benchmarks/capsnet_rem/compile_check.py [--threads 2] [--batch 128]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from capsnet_rem.capsules import margin_loss, reconstruction_loss
from capsnet_rem.model import CapsNet
from reprokit.bench import time_fn, torch_threads


def step(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Forward, loss and backward; returns the class-capsule lengths."""
    net.zero_grad(set_to_none=True)
    out = net(x, y)
    (margin_loss(out.lengths, y) + 0.0005 * reconstruction_loss(out.reconstruction, x)).backward()
    return out.lengths.detach()


def main() -> None:
    """Time eager vs compiled and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(args.batch, 1, 28, 28, generator=gen), torch.randint(0, 10, (args.batch,), generator=gen)
    torch.manual_seed(0)
    eager = CapsNet(decoder=True)
    compiled_net = copy.deepcopy(eager)
    with torch_threads(args.threads):
        eager_s = time_fn(lambda: step(eager, x, y), repeats=3).median_s
        ref = step(eager, x, y)
        ref_grad = eager.primary.conv.weight.grad.clone()
        compiled = torch.compile(compiled_net)
        start = time.perf_counter()
        step(compiled, x, y)
        compile_s = time.perf_counter() - start
        compiled_s = time_fn(lambda: step(compiled, x, y), warmup=0, repeats=3).median_s
        out = step(compiled, x, y)
        grad = compiled_net.primary.conv.weight.grad
    d_len = float((out - ref).abs().max())
    d_grad = float((grad - ref_grad).abs().max() / ref_grad.abs().max())
    print(
        f"torch.compile, batch {args.batch}, {args.threads} threads: compile {compile_s:.0f} s; step eager "
        f"{eager_s:.3f} s, compiled {compiled_s:.3f} s ({eager_s / compiled_s:.2f}x); max |d length| "
        f"{d_len:.1e}, relative d grad {d_grad:.1e}"
    )


if __name__ == "__main__":
    main()
