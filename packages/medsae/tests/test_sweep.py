import itertools
import json
from pathlib import Path

import pytest
import torch
import yaml
from medsae.cli import main
from medsae.lightning_module import SAEModule
from medsae.reproduce import quick_points
from medsae.sweep import SweepGrid, SweepPoint, expand
from reprokit.cli import ReproError, package_path

CONFIGS = package_path("medsae", "configs")
GRID = {"d_sae": [16, 32], "k": [2, 4], "seeds": [0]}


def _write(tmp_path: Path, grid: dict | None, name: str = "tiny_sweep.yaml", **model) -> Path:
    """A sweep config built on the contract config: 256 offline images, 16-d embeddings, 1 epoch of 2 batches."""
    cfg = yaml.safe_load((CONFIGS / "cpu" / "contract.yaml").read_text())
    cfg["trainer"] |= {"max_epochs": 2, "limit_train_batches": 2, "enable_progress_bar": False}
    if grid is not None:
        cfg["trainer"]["callbacks"] = [{"class_path": "medsae.sweep.SweepGrid", "init_args": grid}]
    cfg["model"]["init_args"] |= {"d_in": 16, "d_sae": 16, "k": 2, **model}
    cfg["data"]["init_args"] |= {"embed_dim": 16, "n_images": 256, "store_dir": str(tmp_path / "store")}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cpu_and_paper_grids_expand_to_the_right_runs():
    cpu = expand(CONFIGS / "cpu" / "sweep.yaml")
    want = [SweepPoint("topk", m, k, 0) for m, k in itertools.product([256, 512], [4, 8, 16, 32])]
    assert cpu == want
    paper = expand(CONFIGS / "paper" / "sweep.yaml")
    base_k = yaml.safe_load((CONFIGS / "paper" / "sweep.yaml").read_text())["model"]["init_args"]["k"]
    # the fact sheet's sweep: five variants x {2048, 4096, 8192}; k in {32, 64, 128, 256} for the TopK family only
    want = {(v, m, base_k) for v in ("standard", "april") for m in (2048, 4096, 8192)}
    want |= set(itertools.product(("topk", "batchtopk", "matryoshka"), (2048, 4096, 8192), (32, 64, 128, 256)))
    assert {(p.variant, p.d_sae, p.k) for p in paper} == want and len(paper) == len(want) == 42
    assert {p.seed for p in paper} == {0}
    assert len(expand(CONFIGS / "cpu" / "sweep.yaml", seeds=[3, 4])) == 16
    assert [(p.d_sae, p.k) for p in quick_points(cpu)] == [(256, 4), (256, 16)]


def test_a_point_is_a_run_with_its_overrides():
    p = SweepPoint("batchtopk", 64, 8, 2)
    assert p.experiment("cpu-sweep") == "cpu-sweep-batchtopk-m64-k8-seed2"
    assert p.overrides() == [
        "--model.init_args.variant=batchtopk",
        "--model.init_args.d_sae=64",
        "--model.init_args.k=8",
        "--model.init_args.sae_seed=2",
        "--seed_everything=2",
    ]


@pytest.mark.parametrize(
    ("grid", "why"),
    [
        (None, "exactly one medsae.sweep.SweepGrid"),
        ({"d_sae": [16], "k": [32]}, "k must not exceed d_sae"),
        ({"d_sae": [16], "k": [2], "variants": ["gated"]}, "unknown"),
        ({"d_sae": [], "k": [2]}, "non-empty list"),
        ({"d_sae": [16], "k": [0]}, "positive"),
    ],
)
def test_bad_sweep_configs_are_one_line_errors(tmp_path, capsys, grid, why):
    cfg = _write(tmp_path, grid)
    with pytest.raises(ReproError, match=why):
        expand(cfg)
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--config", str(cfg), "--dry_run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medsae: error:") and why in err and "\n" not in err


def test_l1_variants_are_swept_over_d_sae_only():
    grid = SweepGrid(d_sae=[16, 32], k=[2], variants=["topk", "standard"])
    assert [(p.variant, p.d_sae, p.k) for p in grid.points("topk", 5)] == [
        ("topk", 16, 2),
        ("topk", 32, 2),
        ("standard", 16, 5),
        ("standard", 32, 5),
    ]


def _runs(tmp_path: Path) -> dict[str, list[Path]]:
    root = tmp_path / "runs" / "medsae"
    return {d.name: sorted(d.glob("version_*")) for d in sorted(root.iterdir()) if d.name != "activations"}


def _test_fvu_by_hand(row: dict, cfg: Path) -> float:
    """FVU of a point's checkpoint on the test split, recomputed in float64 from the store, outside the sweep code."""
    from medsae.data import EmbeddingDataModule

    init = yaml.safe_load(cfg.read_text())["data"]["init_args"]
    dm = EmbeddingDataModule(**init)
    dm.setup("test")
    x = dm.split_tensors("test")["x"].double()
    module = SAEModule.load_from_checkpoint(row["ckpt"], map_location="cpu").double().eval()
    sae = module.sae
    pre = torch.relu((x - sae.b_dec) @ sae.W_enc.T + sae.b_enc)
    kth = pre.topk(row["k"], dim=1).values[:, -1:]
    f = torch.where(pre >= kth, pre, 0.0)
    x_hat = f @ sae.W_dec + sae.b_dec
    return float(((x - x_hat) ** 2).sum().detach() / ((x - x.mean(0)) ** 2).sum())


def test_tiny_sweep_end_to_end_then_resume(tmp_path, monkeypatch):
    cfg = _write(tmp_path, GRID)
    out = tmp_path / "results"
    args = ["sweep", "--config", str(cfg), "--name", "tiny", "--out", str(out)]
    main(args)
    runs = _runs(tmp_path)
    assert sorted(runs) == sorted(f"tiny-topk-m{m}-k{k}-seed0" for m in (16, 32) for k in (2, 4))
    res = json.loads((out / "medsae_sweep.json").read_text())
    rows = res["table"]["rows"]
    assert [(r["d_sae"], r["k"]) for r in rows] == [(16, 2), (16, 4), (32, 2), (32, 4)]
    assert (out / "medsae_sweep.png").is_file() and (out / "medsae_sweep.md").is_file()
    for r in rows:
        (version,) = runs[r["experiment"]]
        assert Path(r["ckpt"]).parent == version / "checkpoints" and (version / "metrics.csv").is_file()
        assert json.loads((version / "sweep_point.json").read_text())["fvu"] == r["fvu"]
        assert 0 < r["l0"] <= r["k"]
        assert r["fvu"] == pytest.approx(_test_fvu_by_hand(r, cfg), rel=1e-4)
        assert res["metrics"][f"sweep.topk.m{r['d_sae']}.k{r['k']}.seed0.fvu"] == r["fvu"]

    # A second run of the same command trains nothing: every point is reused.
    main(args)
    assert _runs(tmp_path) == runs
    # A changed setting is a new run of each point (version_1), not a reuse of the old one.
    main([*args, "--trainer.max_epochs=1"])
    assert {k: len(v) for k, v in _runs(tmp_path).items()} == {k: 2 for k in runs}
    # Other seeds are other runs.
    main([*args, "--seeds", "1"])
    assert len(_runs(tmp_path)) == 8

    # An interrupted point resumes from its checkpoint and ends where an uninterrupted run ends.
    def crash(self):
        if self.current_epoch == 1:
            raise RuntimeError("simulated crash")

    target = "crash-topk-m16-k2-seed0"
    crash_args = ["sweep", "--config", str(cfg), "--name", "crash", "--out", str(out / "crash")]
    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="simulated crash"):
        patch.setattr(SAEModule, "on_train_epoch_start", crash, raising=False)
        main(crash_args)
    (first,) = _runs(tmp_path)[target]
    left = list((first / "checkpoints").glob("*.ckpt"))
    assert len(left) == 1 and left[0].name.startswith("epoch=0") and not (first / "sweep_point.json").exists()
    main(crash_args)
    first_run, resumed = _runs(tmp_path)[target]
    assert first_run == first
    assert yaml.safe_load((resumed / "config.yaml").read_text())["ckpt_path"] == str(left[0])
    (resumed_ckpt,) = (resumed / "checkpoints").glob("*.ckpt")
    assert resumed_ckpt.name.startswith("epoch=1")
    main([*crash_args, "--fresh"])
    fresh = _runs(tmp_path)[target][-1]
    (fresh_ckpt,) = (fresh / "checkpoints").glob("*.ckpt")
    a = torch.load(resumed_ckpt, weights_only=True)["state_dict"]
    b = torch.load(fresh_ckpt, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_bad_override_is_reported_once_in_one_line(tmp_path, capsys):
    cfg = _write(tmp_path, GRID)
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--config", str(cfg), "--model.init_args.lr=fast"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("Got value: fast") == 1 and err.count("usage:") == 1, err  # the fit reports it, once
    assert not (tmp_path / "runs" / "medsae").exists() or not any((tmp_path / "runs" / "medsae").rglob("version_*"))
