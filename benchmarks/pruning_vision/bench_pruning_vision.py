"""pruning_vision benchmarks (CPU, one process; baselines measured in the same run, ratios printed).

1. Attribution-evaluation throughput (images/s) per method and architecture; baseline: a plain forward pass.
2. Inference of a 90%-sparse model: dense kernels on the zero-filled weights (baseline) vs sparse execution
   (CSR weights, ``torch.sparse.mm``; convolutions as unfold + sparse matmul). Unstructured sparsity rarely pays off
   on dense hardware; the ratio says by how much here.
3. Cost of the sweep per architecture, per round at the quick config's sizes: one training epoch (800 images) and
   one full ``test`` evaluation (all three dimensions); baseline: an accuracy-only ``test``. The whole sweep's wall
   time is what ``reproduce`` records (``<arch>.sweep_time_s``).

Run: ``python benchmarks/pruning_vision/bench_pruning_vision.py`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import copy
import time

import pytorch_lightning as pl
import torch
from pruning_vision.attribution import heatmaps
from pruning_vision.data import ObjectsDataModule, composited_digits
from pruning_vision.lightning_module import PrunableClassifier
from pruning_vision.pruning import magnitude_prune, make_permanent, prunable_layers
from reprokit.bench import paired_ab, time_fn, torch_threads, write_bench
from torch import nn
from torch.nn import functional as F

ARCHS = {
    "small_resnet": ({"widths": [16, 32, 64]}, ("integrated_gradients", "gradcam", "guided_gradcam"), ("Conv2d",)),
    "small_vit": ({"dim": 64, "depth": 4, "heads": 4}, ("integrated_gradients", "gradcam", "attention"), ("Linear",)),
}


def build(arch: str) -> PrunableClassifier:
    torch.manual_seed(0)
    kwargs, methods, _ = ARCHS[arch]
    return PrunableClassifier(arch=arch, attribution=methods, backbone_kwargs=kwargs, ig_steps=16).eval()


def attribution_throughput(images: torch.Tensor, labels: torch.Tensor) -> dict:
    out = {}
    for arch, (_, methods, _) in ARCHS.items():
        model = build(arch)
        bb = model.backbone
        with torch.no_grad():
            fwd = time_fn(lambda bb=bb: bb(images), warmup=1, repeats=5).median_s
        row = {"forward_images_per_s": len(images) / fwd}
        for method in methods:
            t = time_fn(lambda m=method, bb=bb: heatmaps(m, bb, images, labels, 16), warmup=1, repeats=3).median_s
            row[f"{method}_images_per_s"] = len(images) / t
            row[f"{method}_cost_vs_forward"] = t / fwd
            print(f"{arch:13s} {method:22s} {len(images) / t:8.1f} img/s  ({t / fwd:6.1f}x a forward pass)")
        out[arch] = row
    return out


class SparseLinear(nn.Module):
    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.w = lin.weight.detach().to_sparse_csr()
        self.b = lin.bias.detach() if lin.bias is not None else None

    def forward(self, x):
        y = torch.sparse.mm(self.w, x.reshape(-1, x.shape[-1]).t()).t().reshape(*x.shape[:-1], -1)
        return y + self.b if self.b is not None else y


class SparseConv2d(nn.Module):
    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.w = conv.weight.detach().flatten(1).to_sparse_csr()

    def forward(self, x):
        c = self.conv
        cols = F.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride)  # [B, Cin*k*k, L]
        h = (x.shape[-2] + 2 * c.padding[0] - c.dilation[0] * (c.kernel_size[0] - 1) - 1) // c.stride[0] + 1
        w = (x.shape[-1] + 2 * c.padding[1] - c.dilation[1] * (c.kernel_size[1] - 1) - 1) // c.stride[1] + 1
        y = torch.stack([torch.sparse.mm(self.w, col) for col in cols])  # [B, Cout, L]
        y = y.view(len(x), -1, h, w)
        return y + c.bias.view(1, -1, 1, 1) if c.bias is not None else y


def sparsify(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, SparseLinear(child))
        elif isinstance(child, nn.Conv2d):
            setattr(module, name, SparseConv2d(child))
        else:
            sparsify(child)
    return module


def sparse_vs_dense(images: torch.Tensor, sparsity: float = 0.9) -> dict:
    out = {}
    for arch, (_, _, types) in ARCHS.items():
        model = build(arch)
        magnitude_prune([m for _, m in prunable_layers(model.backbone, types)], sparsity)
        dense = make_permanent(model.backbone)
        sparse = sparsify(copy.deepcopy(dense))
        with torch.no_grad():
            err = (dense(images) - sparse(images)).abs().max().item()
            res = paired_ab(lambda d=dense: d(images), lambda s=sparse: s(images), pairs=5)
        out[arch] = {"max_abs_diff": err, **res.as_dict()}
        print(
            f"{arch:13s} {sparsity:.0%}-sparse {types[0]}: sparse/dense time = {res.median_ratio:.2f}x "
            f"(max |diff| {err:.1e})"
        )
    return out


def sweep_cost() -> dict:

    out = {}
    for arch, (kwargs, methods, _) in ARCHS.items():
        dm = ObjectsDataModule(n_train=800, n_val=100, n_test=128, batch_size=64, eval_batch_size=128)
        model = PrunableClassifier(
            arch=arch, attribution=methods, backbone_kwargs=kwargs, attribution_images=32, ig_steps=8
        )
        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            inference_mode=False,
        )
        start = time.perf_counter()
        trainer.fit(model, dm)
        epoch = time.perf_counter() - start
        start = time.perf_counter()
        trainer.test(model, dm, verbose=False)
        full_eval = time.perf_counter() - start
        acc_only = PrunableClassifier(arch=arch, attribution=(), backbone_kwargs=kwargs, distortions={})
        acc_only.load_state_dict(model.state_dict())
        start = time.perf_counter()
        trainer.test(acc_only, dm, verbose=False)
        base_eval = time.perf_counter() - start
        out[arch] = {
            "train_epoch_s": epoch,
            "eval_s": full_eval,
            "eval_acc_only_s": base_eval,
            "eval_cost_vs_acc_only": full_eval / base_eval,
            "round_s": epoch + full_eval,
        }
        print(
            f"{arch:13s} one round = epoch {epoch:.1f}s + evaluation {full_eval:.1f}s "
            f"(evaluation = {full_eval / base_eval:.1f}x an accuracy-only test)"
        )
    return out


def main() -> None:
    with torch_threads(max(1, min(2, torch.get_num_threads()))):
        images, labels, _, _ = composited_digits("test", 32)
        result = {
            "threads": torch.get_num_threads(),
            "attribution_throughput": attribution_throughput(images, labels),
            "sparse_vs_dense_inference": sparse_vs_dense(composited_digits("test", 64)[0]),
            "sweep_cost": sweep_cost(),
        }
    print("wrote", write_bench("pruning_vision", result))


if __name__ == "__main__":
    main()
