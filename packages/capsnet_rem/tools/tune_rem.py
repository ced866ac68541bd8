"""Validation-only tuning of the CPU REM protocol: fit (no test) baseline/REM variants on given seeds.

Every run goes through the real CLI (``fit`` only: the test split is never touched). For each run it prints the
validation accuracy and margin loss of the model that the table would use (baseline: best validation checkpoint;
REM: the network after the last epoch, i.e. after its last pruning step), the weight sparsity and the parse trees
and parse-tree entropy per predicted class on the validation split (same bins as the tables). ``--summary`` then
checks every variant against the baseline row of the same seed in --out: accuracy difference and the number of
classes whose validation entropy is lower than the baseline's (the three CPU claims, on validation).

    heavy -1 python packages/capsnet_rem/tools/tune_rem.py --seeds 42 43 --baseline \
        --variant 'ft5={"max_epochs": 25, "prune_epochs": 20, "finetune_lr_factor": 0.3}'

A variant is a name and JSON: ``max_epochs``, ``config`` (``rem`` or ``baseline``; default ``rem``), ``seeds``
(run only on these) and any
``REMPruning`` arguments that replace the CPU config's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import yaml
from capsnet_rem.capsules import margin_loss
from capsnet_rem.reproduce import NO_BAR, PAPER, _load, analyse, lower_pairs, read_metrics
from reprokit.cli import fit_test, package_path


@torch.no_grad()
def validate(net: torch.nn.Module, dm) -> tuple[float, float]:
    """Accuracy and margin loss of ``net`` on the validation split."""
    net.eval()
    correct = n = 0
    loss = 0.0
    for x, y in dm.val_dataloader():
        lengths = net(dm.prepare_batch(x, train=False)).lengths
        correct += int((lengths.argmax(1) == y).sum())
        loss += float(margin_loss(lengths, y)) * len(y)
        n += len(y)
    return correct / n, loss / n


def summary(rows: list[dict]) -> list[dict]:
    """Per variant and seed: sparsity, accuracy minus the same seed's baseline, classes with lower entropy.

    The last baseline row of a seed is the reference (rows are appended, so a rerun replaces an older one).
    Rows without validation entropies (written before the tool reported them) are skipped.
    """
    rows = [r for r in rows if "val_entropy" in r]
    base = {r["seed"]: r for r in rows if r["variant"] == "baseline"}
    latest = {(r["variant"], r["seed"]): r for r in rows if r["variant"] != "baseline"}
    out = []
    for (variant, seed), row in latest.items():
        if seed not in base:
            continue
        ref = base[seed]
        lower, classes = lower_pairs(ref["val_entropy"], row["val_entropy"])
        entry = {
            "variant": variant,
            "seed": seed,
            "sparsity": round(row["sparsity"], 3),
            "val_acc_minus_baseline": round(row["val_acc"] - ref["val_acc"], 4),
            "val_entropy_mean": round(row["val_entropy_mean"], 3),
            "baseline_val_entropy_mean": round(ref["val_entropy_mean"], 3),
            "classes_lower_entropy": lower,
            "classes": classes,
        }
        for key, name in (("val_trees", "classes_fewer_trees"), ("val_coef_entropy", "classes_lower_coef_entropy")):
            if key in row and key in ref:
                entry[name] = lower_pairs(ref[key], row[key])[0]
        out.append(entry)
    return out


def main() -> None:
    """Fit every requested run and append one JSON row per run to --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--variant", action="append", default=[], help="name=JSON of REMPruning args/max_epochs")
    parser.add_argument("--baseline", action="store_true", help="also fit the baseline config")
    parser.add_argument("--out", default="runs/capsnet_rem/tune.jsonl", help="JSON lines, one per run (appended)")
    parser.add_argument("--summary", action="store_true", help="only compare the rows in --out with the baseline")
    args = parser.parse_args()
    if args.summary:
        rows = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]
        for row in summary(rows):
            print(json.dumps(row))
        return
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cpu = package_path(PAPER, "configs") / "cpu"
    runs = [("baseline", cpu / "baseline_mnist5k.yaml", None)] if args.baseline else []
    tmp = Path(tempfile.mkdtemp(prefix="capsnet_rem_tune_"))
    for spec in args.variant:
        name, _, text = spec.partition("=")
        changes = json.loads(text or "{}")
        base = changes.pop("config", "rem")
        only = changes.pop("seeds", None)
        cfg = yaml.safe_load((cpu / f"{base}_mnist5k.yaml").read_text())
        cfg["trainer"]["max_epochs"] = changes.pop("max_epochs", cfg["trainer"]["max_epochs"])
        if changes:
            rem = next(c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("REMPruning"))
            rem["init_args"].update(changes)
        path = tmp / f"{base}_{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        runs.append((name, path, only))
    for seed in args.seeds:
        for name, config, only in runs:
            if only is not None and seed not in only:
                continue
            result = fit_test(
                PAPER,
                config,
                experiment=f"tune-{name}-seed{seed}",
                overrides=[f"--seed_everything={seed}", *NO_BAR],
                test=False,
            )
            net = _load(result)
            acc, loss = validate(net, result["cli"].datamodule)
            trees = analyse(net, result["cli"].datamodule, result["cli"].model.hparams.tree_bins, split="val")
            stats = trees["stats"]
            weights = [p for n, p in net.pruning_parameters() if n.rsplit(".", 1)[-1] == "weight"]
            sparsity = sum(int((p == 0).sum()) for p in weights) / sum(p.numel() for p in weights)
            series = read_metrics(result["log_dir"])
            row = {
                "variant": name,
                "seed": seed,
                "val_acc": acc,
                "val_margin_loss": loss,
                "sparsity": sparsity,
                "val_trees_mean": float(stats["trees_mean"]),
                "val_entropy_mean": float(stats["entropy_mean"]),
                "val_entropy": [round(float(v), 4) for v in stats["entropy"]],
                "val_trees": [float(v) for v in stats["trees"]],
                "val_coef_entropy": [round(float(v), 5) for v in stats["coef_entropy"]],
                "fit_time_s": round(result["fit_time_s"], 1),
                "val_acc_per_epoch": [round(v, 3) for _, v in series.get("val/acc", [])],
                "sparsity_per_epoch": [round(v, 3) for _, v in series.get("rem/sparsity", [])],
            }
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as handle:
                handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
