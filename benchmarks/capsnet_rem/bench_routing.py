"""Training step of Sabour's MNIST CapsNet (1152 primary capsules, 3 iterations, decoder, batch 128, 2 threads).

Ours (votes as one contraction, votes grouped by output capsule so routing is batched matrix products) against the
straightforward broadcast-matmul formulation (``W[None] @ u[..., None]`` and broadcast multiply-sum routing) measured
in the same run, alternately. Target (issue #3): >= 2.5x faster, < 1.5 GB peak RSS, outputs equal to 1e-5.
The class-capsule layer alone (votes + routing, forward and backward on fixed primary capsules) is timed the same
way: the convolutions both sides share take most of a step and bound the whole-step ratio.
The convolutions are profiled on their own (``conv_profile.py``: GFLOP/s of each pass against a GEMM of the same
size, NCHW vs ``channels_last``, oneDNN on/off, and the frequency-domain primary convolution); their time against
the broadcast step is the Amdahl bound on the step ratio for any routing, however fast.
Two step ratios, each from its own alternating A/B block against the same broadcast network: the routing
formulation alone (both sides run the identical ``nn.Conv2d`` convolutions, oneDNN NCHW) and the whole
implementation (ours with ``CapsNet(primary_conv="fft")``, the frequency-domain primary convolution of
``capsnet_rem.fftconv``; its outputs are checked against the broadcast side too).
``torch.compile`` of both (what ``CapsuleClassifier(compile_net=True)`` runs) is timed against the same broadcast
side too (``--no-compile`` skips it).
Also: inference of a compacted (capsule-pruned) network against the dense one.

    python benchmarks/capsnet_rem/bench_routing.py            # a few batches per side (minutes)
    python benchmarks/capsnet_rem/bench_routing.py --full     # a 5,000-image epoch per side
"""

from __future__ import annotations

import argparse
import time

import torch
from capsnet_rem.capsules import margin_loss, reconstruction_loss, squash
from capsnet_rem.model import CapsNet, compact
from conv_profile import profile as conv_profile
from conv_profile import report as conv_report
from reprokit.bench import PeakMemory, paired_ab, time_fn, torch_threads, write_bench
from torch import nn


class BroadcastClassCapsules(nn.Module):
    """The usual formulation: W ``[1, I, J, D, Din]`` broadcast against u ``[B, I, 1, Din, 1]``.

    Shares the weights of ``ours`` so that both compute the same function.
    """

    def __init__(self, ours: nn.Module):
        super().__init__()
        self.iterations = ours.iterations
        self.weight = nn.Parameter(ours.weight.detach().permute(0, 2, 3, 1).contiguous())  # [I, J, D, Din]
        self.bias = nn.Parameter(ours.bias.detach().clone())

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u_hat = (self.weight[None] @ u[:, :, None, :, None]).squeeze(-1)  # [B, I, J, D]
        frozen = u_hat.detach()
        logits = torch.zeros(u_hat.shape[:3])
        for it in range(self.iterations):
            c = logits.softmax(dim=2)
            last = it == self.iterations - 1
            v = squash(((u_hat if last else frozen) * c[..., None]).sum(1) + self.bias)
            if not last:
                logits = logits + (frozen * v[:, None]).sum(-1)
        return v, c


def make_pair(seed: int = 0) -> tuple[CapsNet, CapsNet]:
    torch.manual_seed(seed)
    ours = CapsNet(decoder=True)
    theirs = CapsNet(decoder=True)
    theirs.load_state_dict(ours.state_dict())
    theirs.caps = BroadcastClassCapsules(ours.caps)
    return ours, theirs


def step_fn(net: CapsNet, batches: list[tuple[torch.Tensor, torch.Tensor]]):
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def run() -> None:
        for x, y in batches:
            out = net(x, y)
            loss = margin_loss(out.lengths, y) + 0.0005 * reconstruction_loss(out.reconstruction, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


def caps_step_fn(layer: nn.Module, u: torch.Tensor, probe: torch.Tensor):
    """Forward + backward of the class-capsule layer alone on fixed primary capsules ``u`` ``[B, I, 8]``.

    Isolates the votes and the routing from the convolutions that both formulations share, so that the report can
    separate what the routing formulation controls from the shared cost that bounds the whole-step ratio.
    """

    def run() -> None:
        v, _ = layer(u)
        layer.zero_grad(set_to_none=True)
        u.grad = None
        (v * probe).sum().backward()

    return run


def check_equal(ours: CapsNet, theirs: CapsNet, x: torch.Tensor, y: torch.Tensor) -> dict:
    outs, grads = [], []
    for net in (ours, theirs):
        net.zero_grad()
        out = net(x, y)
        (margin_loss(out.lengths, y) + 0.0005 * reconstruction_loss(out.reconstruction, x)).backward()
        outs.append(out)
        grads.append(net.primary.conv.weight.grad.clone())
    diff_len = float((outs[0].lengths - outs[1].lengths).abs().max().detach())
    diff_c = float((outs[0].coupling - outs[1].coupling).abs().max().detach())
    diff_g = float((grads[0] - grads[1]).abs().max() / grads[1].abs().max())
    return {"max_abs_diff_lengths": diff_len, "max_abs_diff_coupling": diff_c, "max_rel_diff_grad": diff_g}


def compaction(threads: int) -> list[dict]:
    """Inference of dense vs compacted networks with a growing share of dead primary-capsule types."""
    rows = []
    x = torch.rand(128, 1, 28, 28)
    for dead in (0.5, 0.75, 0.9):
        torch.manual_seed(0)
        net = CapsNet().eval()
        n_dead = int(dead * net.primary.types)
        per_type = net.grid[0] * net.grid[1]
        with torch.no_grad():
            net.caps.weight[: n_dead * per_type] = 0
        small = compact(net).eval()
        with torch.no_grad(), torch_threads(threads):
            dense = time_fn(lambda net=net: net(x), warmup=1, repeats=3)
            comp = time_fn(lambda small=small: small(x), warmup=1, repeats=3)
            diff = float((net(x).lengths - small(x).lengths).abs().max())
        rows.append(
            {
                "dead_fraction": dead,
                "capsules": [net.num_primary, small.num_primary],
                "dense_s": dense.median_s,
                "compact_s": comp.median_s,
                "speedup": dense.median_s / comp.median_s,
                "max_abs_diff": diff,
            }
        )
        print(
            f"compaction: {dead:.0%} of types dead, {net.num_primary} -> {small.num_primary} capsules, "
            f"inference speed-up {dense.median_s / comp.median_s:.2f}x (max |diff| {diff:.1e})"
        )
    return rows


def compiled_side(net: CapsNet, theirs: CapsNet, batches: list, pairs: int) -> dict:
    """``torch.compile(net)`` (what ``CapsuleClassifier(compile_net=True)`` runs; shares ``net``'s weights) against
    the broadcast side: compile time, capsule lengths vs eager, peak RSS and the paired step times."""
    compiled = torch.compile(net)
    x0, y0 = batches[0]
    with torch.no_grad():
        eager_len = net(x0, y0).lengths
    start = time.perf_counter()
    # compared before any optimizer step of the compiled side has changed the shared weights
    diff = float((compiled(x0, y0).lengths.detach() - eager_len).abs().max())
    step_fn(compiled, batches[:1])()  # also compiles the backward
    compile_s = time.perf_counter() - start
    with PeakMemory() as mem:
        step_fn(compiled, batches[:1])()
    result = paired_ab(step_fn(compiled, batches), step_fn(theirs, batches), pairs=pairs, warmup=0)
    return {"compile_s": compile_s, "diff": diff, "peak": mem.peak_rss_mb, "result": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="a 5,000-image epoch per side (40 batches of 128)")
    parser.add_argument("--batches", type=int, default=2, help="batches per timed call (default run)")
    parser.add_argument("--pairs", type=int, default=3, help="alternating A/B repeats")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile sides")
    args = parser.parse_args()
    n_batches, pairs = (40, 1) if args.full else (args.batches, args.pairs)
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.rand(128, 1, 28, 28, generator=gen), torch.randint(0, 10, (128,), generator=gen))
        for _ in range(n_batches)
    ]
    ours, theirs = make_pair()
    # ours with the frequency-domain primary convolution: same weights, only the convolution algorithm differs
    ours_fft = CapsNet(decoder=True, primary_conv="fft")
    ours_fft.load_state_dict(ours.state_dict())
    with torch_threads(args.threads):
        equal = check_equal(ours, theirs, *batches[0])
        equal_fft = check_equal(ours_fft, theirs, *batches[0])
        print(f"equality: {equal}; fft primary conv vs broadcast: {equal_fft}")
        # peak memory of each side alone, in a clean block
        peaks = {}
        for name, net in (("ours", ours), ("ours_fft", ours_fft), ("broadcast", theirs)):
            fn = step_fn(net, batches[:1])
            fn()
            with PeakMemory() as mem:
                fn()
            peaks[name] = mem.peak_rss_mb
        # identical convolutions: the routing formulation alone
        result = paired_ab(step_fn(ours, batches), step_fn(theirs, batches), pairs=pairs, warmup=0)
        # the whole implementation: our routing and our primary convolution against the same broadcast network
        result_f = paired_ab(step_fn(ours_fft, batches), step_fn(theirs, batches), pairs=pairs, warmup=0)
        sides_c = {}
        if not args.no_compile:
            for name, net in (("ours_compiled", ours), ("ours_fft_compiled", ours_fft)):
                sides_c[name] = compiled_side(net, theirs, batches, pairs)
                peaks[name] = sides_c[name]["peak"]
        # The capsule layer alone (votes + routing, forward and backward) on the primary capsules of one batch.
        with torch.no_grad():
            u = ours.primary(torch.relu(ours.conv(batches[0][0])))
        u.requires_grad_(True)
        probe = torch.randn(u.shape[0], ours.caps.out_caps, ours.caps.out_dims, generator=gen)
        caps = paired_ab(caps_step_fn(ours.caps, u, probe), caps_step_fn(theirs.caps, u, probe), pairs=5, warmup=1)
    speedup = result.median_ratio
    per_epoch = {k: t.median_s / n_batches * 40 for k, t in (("ours", result.a), ("broadcast", result.b))}
    per_epoch["ours_fft"] = result_f.a.median_s / n_batches * 40
    per_epoch["broadcast_in_fft_pairs"] = result_f.b.median_s / n_batches * 40
    print(f"training step, batch 128, {args.threads} threads, {n_batches} batches x {pairs} pairs:")
    print(f"  ours      {per_epoch['ours']:.1f} s per 5k-image epoch, peak RSS {peaks['ours']:.0f} MiB")
    print(f"  broadcast {per_epoch['broadcast']:.1f} s per 5k-image epoch, peak RSS {peaks['broadcast']:.0f} MiB")
    print(
        f"  routing only (identical nn.Conv2d convolutions): speed-up {speedup:.2f}x (target >= 2.5x); "
        f"ours under 1.5 GB: {peaks['ours'] < 1536}"
    )
    print(
        f"  whole implementation (ours + fft primary conv): {per_epoch['ours_fft']:.1f} s per 5k-image epoch vs "
        f"broadcast {per_epoch['broadcast_in_fft_pairs']:.1f} s in its pairs, peak RSS {peaks['ours_fft']:.0f} MiB, "
        f"speed-up {result_f.median_ratio:.2f}x (target >= 2.5x); under 1.5 GB: {peaks['ours_fft'] < 1536}"
    )
    for name, side in sides_c.items():
        per_epoch[name] = side["result"].a.median_s / n_batches * 40
        print(
            f"  {name} (torch.compile as CapsuleClassifier(compile_net=True); compiled in {side['compile_s']:.0f} s, "
            f"max |d length| vs eager {side['diff']:.1e}): {per_epoch[name]:.1f} s per 5k-image epoch, peak RSS "
            f"{side['peak']:.0f} MiB, speed-up over broadcast {side['result'].median_ratio:.2f}x"
        )
    shared = result.a.median_s / n_batches - caps.a.median_s  # per batch: everything but the capsule layer
    print(
        f"  capsule layer alone (votes + routing, fwd + bwd, one batch): ours {caps.a.median_s:.3f} s, "
        f"broadcast {caps.b.median_s:.3f} s, speed-up {caps.median_ratio:.2f}x; the rest of ours' step "
        f"(convolutions, decoder, Adam) {shared:.3f} s, which bounds the whole-step ratio by "
        f"{(shared + caps.b.median_s) / shared:.2f}x"
    )
    convs = conv_profile(batch=128, threads=args.threads)
    conv_report(convs)
    broadcast_batch_s = result.b.median_s / n_batches
    amdahl = {}
    for key, layout, step_s in (
        ("direct", "oneDNN NCHW", result.a.median_s / n_batches),
        ("fft", "fft primary conv (conv1 oneDNN NCHW)", result_f.a.median_s / n_batches),
    ):
        conv_s = convs["layouts"][layout]["total_s"]
        amdahl[key] = {
            "conv_s": conv_s,
            "broadcast_step_s": broadcast_batch_s,
            "step_ratio_bound": broadcast_batch_s / conv_s,
        }
        print(
            f"  Amdahl ({layout}): the convolutions alone (fwd + bwd) take {conv_s:.3f} s of the "
            f"{step_s:.3f} s step; with a routing, decoder and optimizer that cost nothing the step ratio would be "
            f"{broadcast_batch_s / conv_s:.2f}x at most"
        )
    rows = compaction(args.threads)
    compiled_json = {
        name: {
            "compile_s": side["compile_s"],
            "max_abs_diff_lengths_vs_eager": side["diff"],
            "speedup": side["result"].median_ratio,
            "paired": side["result"].as_dict(),
        }
        for name, side in sides_c.items()
    }
    path = write_bench(
        "capsnet_rem_routing",
        {
            "setup": {"batch": 128, "threads": args.threads, "batches": n_batches, "pairs": pairs, "full": args.full},
            "equality": equal,
            "equality_fft": equal_fft,
            "peak_rss_mb": peaks,
            "seconds_per_5k_epoch": per_epoch,
            "speedup": speedup,
            "paired": result.as_dict(),
            "fft": {"speedup": result_f.median_ratio, "paired": result_f.as_dict()},
            "compiled": compiled_json,
            "capsule_layer": {
                "ours_s": caps.a.median_s,
                "broadcast_s": caps.b.median_s,
                "speedup": caps.median_ratio,
                "paired": caps.as_dict(),
                "rest_of_step_s": shared,
                "step_ratio_bound": (shared + caps.b.median_s) / shared,
            },
            "convolutions": convs,
            "amdahl_conv_only": amdahl,
            "compaction": rows,
            "targets": {"speedup_min": 2.5, "peak_rss_mb_max": 1536, "equal_atol": 1e-5},
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
