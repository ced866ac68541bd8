"""lung_seg benchmarks: DICOM preprocessing throughput, training step time/memory per model, whole-scan inference.

Each measurement has its baseline in the same run and prints a ratio:
- preprocessing: the full read -> order -> HU -> window pipeline vs bare ``pydicom.dcmread(...).pixel_array``;
- training step: MONAI UNet and BasicUNet vs the paper's U-Net (same input, same loss, same optimiser);
- whole-scan inference: the U-Net on every slice of a series vs the traditional threshold baseline on the same series.

Run: ``python benchmarks/lung_seg/bench_pipeline.py [--size 96] [--width 8]`` (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pydicom
import torch
from lung_seg.baseline import threshold_segment
from lung_seg.dicom import read_series_dir, window
from lung_seg.inference import predict_volume
from lung_seg.model import MonaiBasicUNet, MonaiUNet, UNet
from lung_seg.phantom import PhantomConfig, write_dataset
from monai.losses import DiceLoss
from reprokit.bench import PeakMemory, paired_ab, time_fn, write_bench


def bench_preprocessing(folder: Path, repeats: int) -> dict:
    files = sorted(folder.glob("*.dcm"))
    raw = paired_ab(
        lambda: [pydicom.dcmread(f).pixel_array for f in files],
        lambda: window(read_series_dir(folder)[0], bits=8),
        pairs=repeats,
    )
    n = len(files)
    out = {
        "slices": n,
        "raw_slices_per_s": n / raw.a.median_s,
        "pipeline_slices_per_s": n / raw.b.median_s,
        "pipeline_over_raw_time": raw.median_ratio,
        "timings": raw.as_dict(),
    }
    print(
        f"preprocessing: {out['pipeline_slices_per_s']:.0f} slices/s (raw read {out['raw_slices_per_s']:.0f}/s), "
        f"pipeline/raw time ratio {raw.median_ratio:.2f}"
    )
    return out


def bench_training(size: int, width: int, batch: int, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=gen)
    y = (torch.rand(batch, 1, size, size, generator=gen) > 0.95).float()
    loss_fn = DiceLoss(sigmoid=True)
    nets = {
        "unet_paper": UNet(base_channels=width, depth=4),
        "monai_unet": MonaiUNet(tuple(2 * width * 2**k for k in range(5))),
        "monai_basic_unet": MonaiBasicUNet((width, width, 2 * width, 4 * width, 8 * width, width)),
    }
    results = {}
    for name, net in nets.items():
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)

        def step(net=net, opt=opt):
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()

        timing = time_fn(step, warmup=1, repeats=repeats)
        results[name] = {"params": sum(p.numel() for p in net.parameters()), **timing.as_dict()}
    ref = results["unet_paper"]["median_s"]
    for name, r in results.items():
        r["time_over_unet_paper"] = r["median_s"] / ref
        print(
            f"train step {name:17s} {r['median_s'] * 1e3:8.1f} ms  ({r['time_over_unet_paper']:.2f}x the paper "
            f"U-Net)  peak RSS {r['peak_rss_mb']:.0f} MiB  params {r['params']:,}"
        )
    return {"input": [batch, 1, size, size], "models": results}


def bench_inference(folder: Path, width: int, repeats: int) -> dict:
    hu, geometry, _ = read_series_dir(folder)
    image = window(hu, bits=8)
    net = UNet(base_channels=width, depth=4).eval()
    with PeakMemory() as mem:
        pair = paired_ab(
            lambda: threshold_segment(hu, geometry.spacing), lambda: predict_volume(net, image), pairs=repeats
        )
    out = {
        "volume": list(hu.shape),
        "threshold_s": pair.a.median_s,
        "unet_s": pair.b.median_s,
        "unet_over_threshold_time": pair.median_ratio,
        "peak_rss_mb": mem.peak_rss_mb,
        "timings": pair.as_dict(),
    }
    print(
        f"whole-scan inference {tuple(hu.shape)}: U-Net {pair.b.median_s:.2f} s, threshold baseline "
        f"{pair.a.median_s:.2f} s per series (ratio {pair.median_ratio:.2f})"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=96, help="slice size (pixels)")
    parser.add_argument("--slices", type=int, default=32, help="slices per series")
    parser.add_argument("--width", type=int, default=8, help="first-level channels of the U-Nets (paper: 64)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = PhantomConfig(matrix=args.size, slices=args.slices)
        folder = write_dataset(tmp, cfg, patients=1, seed=0, scans_per_patient=(1,))[0]
        payload = {
            "settings": vars(args),
            "preprocessing": bench_preprocessing(folder, args.repeats),
            "training_step": bench_training(args.size, args.width, args.batch, args.repeats),
            "whole_scan_inference": bench_inference(folder, args.width, args.repeats),
        }
    print("wrote", write_bench("lung_seg_pipeline", payload))


if __name__ == "__main__":
    main()
