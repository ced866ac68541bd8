"""The validation-only tuning tool: its claim summary and the split that ``analyse`` reads."""

import importlib.util
import math
from pathlib import Path

import torch
from capsnet_rem.capsules import bin_index
from capsnet_rem.reproduce import _lower_fraction, analyse

TOOL = Path(__file__).resolve().parents[1] / "tools" / "tune_rem.py"


def _tool():
    spec = importlib.util.spec_from_file_location("tune_rem", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(variant, seed, acc, entropy, sparsity=0.0):
    seen = [e for e in entropy if e == e]
    return {
        "variant": variant,
        "seed": seed,
        "val_acc": acc,
        "sparsity": sparsity,
        "val_entropy": entropy,
        "val_entropy_mean": sum(seen) / len(seen),
    }


def test_summary_compares_each_variant_with_the_same_seeds_baseline():
    nan = float("nan")
    rows = [
        {"variant": "old", "seed": 42, "val_acc": 0.5, "sparsity": 0.9},  # no entropies: skipped
        _row("baseline", 42, 0.90, [5.0, 5.0, 5.0]),
        _row("baseline", 42, 0.99, [5.0, 4.0, 3.0]),  # a rerun: the last baseline row is the reference
        _row("baseline", 43, 0.98, [2.0, 2.0, 2.0]),
        _row("rem", 42, 0.97, [4.0, 4.5, nan], sparsity=0.85),  # class 2 never predicted: not counted
        _row("rem", 43, 0.99, [1.0, 3.0, 1.5], sparsity=0.86),
        _row("rem", 44, 0.99, [0.0, 0.0, 0.0]),  # no baseline for seed 44: skipped
    ]
    out = {(r["variant"], r["seed"]): r for r in _tool().summary(rows)}
    assert set(out) == {("rem", 42), ("rem", 43)}
    # seed 42 against the second baseline row: 4.0 < 5.0 yes, 4.5 < 4.0 no, class 2 dropped
    assert out["rem", 42]["classes_lower_entropy"] == 1 and out["rem", 42]["classes"] == 2
    assert math.isclose(out["rem", 42]["val_acc_minus_baseline"], -0.02)
    assert math.isclose(out["rem", 42]["baseline_val_entropy_mean"], 4.0)
    assert out["rem", 43]["classes_lower_entropy"] == 2 and out["rem", 43]["classes"] == 3
    assert math.isclose(out["rem", 43]["val_acc_minus_baseline"], 0.01)


class _Loaders:
    """Two splits with different images and labels, so the split ``analyse`` reads is visible in its result."""

    def __init__(self):
        gen = torch.Generator().manual_seed(1)
        self.val = (torch.rand(7, 1, 20, 20, generator=gen, dtype=torch.float64), torch.arange(7) % 10)
        self.test = (torch.rand(5, 1, 20, 20, generator=gen, dtype=torch.float64), torch.zeros(5, dtype=torch.long))

    def val_dataloader(self):
        return [self.val]

    def test_dataloader(self):
        return [self.test]

    def prepare_batch(self, x, train):
        return x


def test_analyse_reads_the_requested_split(small_capsnet):
    net = small_capsnet(conv_channels=4, primary_types=2, class_dims=4).double()
    dm = _Loaders()
    for split, (x, y) in (("val", dm.val), ("test", dm.test)):
        ev = analyse(net, dm, bins=11, split=split)
        with torch.no_grad():
            out = net(x)
        pred = out.lengths.argmax(1)
        assert ev["acc"] == float((pred == y).double().mean())
        # an independent count: samples per predicted class from the same forward pass
        counts = torch.bincount(pred, minlength=10).double()
        seen = counts > 0
        assert torch.equal(ev["stats"]["count"][seen].double(), counts[seen])
        toward = out.coupling[torch.arange(len(x)), :, pred]
        hist = torch.bincount(bin_index(toward.flatten(), 11), minlength=11).double()
        assert torch.allclose(torch.tensor(ev["hist"], dtype=torch.float64), hist / hist.sum())


def test_lower_fraction_counts_strictly_lower_pairs_and_skips_unpredicted_classes():
    nan = float("nan")
    baseline = [[2.0, 3.0, nan], [1.0, 1.0, 4.0]]  # two seeds x three classes
    rem = [[1.0, 3.0, 0.5], [0.5, nan, 5.0]]
    # comparable pairs: (2,1) lower, (3,3) tie, (1,0.5) lower, (4,5) higher -> 2 of 4
    assert _lower_fraction(baseline, rem) == 0.5
