"""The contract every package passes (../shared/DESIGN.md, items 1-7), parametrised over every package.

The example package under tests/example_paper proves the contract itself; each paper package under packages/ is
picked up automatically and declares its small CPU config in ``[tool.reprokit]`` of its pyproject.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch
from contract import PAPERS, ROOT, Package, discover
from reprokit.cli import main, run_cli
from reprokit.results import check

PACKAGES = discover()
TINY = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def by_package(slow_unless_example: bool = False):
    """Parametrise over packages; optionally mark all but the example package slow."""
    params = []
    for pkg in PACKAGES:
        marks = [pytest.mark.slow] if slow_unless_example and not pkg.ddp_fast else []
        params.append(pytest.param(pkg, id=pkg.name, marks=marks))
    return pytest.mark.parametrize("pkg", params)


def configs_params():
    return [
        pytest.param(pkg, cfg, id=f"{pkg.name}:{cfg.relative_to(pkg.root)}") for pkg in PACKAGES for cfg in pkg.configs
    ]


def run_dirs(paper: str) -> list[Path]:
    root = Path(os.environ["REPROKIT_RUNS"]) / paper
    return sorted(p for p in root.glob("*/version_*") if p.is_dir())


def checkpoints(paper: str) -> list[Path]:
    return sorted((Path(os.environ["REPROKIT_RUNS"]) / paper).rglob("*.ckpt"))


def expect_user_error(pkg: Package, args: list[str], capsys, *needles: str) -> str:
    """The CLI ends with exit status 2 and a one-line message containing every needle."""
    with pytest.raises(SystemExit) as exc:
        main(pkg.name, args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1] if err else ""
    for needle in needles:
        assert needle.lower() in err.lower(), err[-2000:]
    return last


# -------------------------------------------------------------------------------------------- 1. cherry-pick
@by_package()
def test_import_isolation(pkg: Package):
    """Importing every module of a package imports no other paper package."""
    others = [p for p in (*PAPERS, "example_paper") if p != pkg.name]
    code = (
        "import importlib, pkgutil, sys\n"
        f"import {pkg.name} as m\n"
        "for info in pkgutil.walk_packages(m.__path__, m.__name__ + '.'):\n"
        "    importlib.import_module(info.name)\n"
        f"bad = sorted({{n.split('.')[0] for n in sys.modules}} & set({others!r}))\n"
        "assert not bad, f'imports other paper packages: {bad}'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)


def _venv_python(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin" / "python"


@by_package()
def test_cherry_pick_wheel_install(pkg: Package, tmp_path: Path):
    """``pip install ./shared ./packages/<paper>`` (as wheels) into a new venv works and the package runs from there.

    Third-party dependencies come from this venv through a path entry (installing torch again per package would take
    minutes); our own editable packages do not leak in, because their .pth hooks are not processed there.
    """
    py = _venv_python(tmp_path / "venv")
    site = next((tmp_path / "venv" / "lib").glob("python3*/site-packages"))
    host_site = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    (site / "zz_host_deps.pth").write_text(host_site + "\n")
    pip = [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--disable-pip-version-check"]
    subprocess.run([*pip, str(ROOT / "shared"), str(pkg.root)], check=True, timeout=600, capture_output=True)
    code = (
        f"import {pkg.name}, reprokit, sys\n"
        f"assert '{tmp_path}' in {pkg.name}.__file__, {pkg.name}.__file__\n"
        "from reprokit.cli import package_path\n"
        f"assert any(package_path('{pkg.name}', 'configs').rglob('*.yaml'))\n"
        f"assert any(package_path('{pkg.name}', 'expected').glob('*.json'))\n"
    )
    subprocess.run([str(py), "-c", code], check=True, timeout=600, cwd=tmp_path)
    check_deps = subprocess.run([str(py), "-m", "pip", "check"], capture_output=True, text=True, timeout=600)
    mine = [line for line in check_deps.stdout.splitlines() if line.lower().startswith(pkg.name.replace("_", "-"))]
    assert not mine, mine


@pytest.mark.slow
@by_package()
def test_cherry_pick_empty_venv(pkg: Package, tmp_path: Path):
    """The real thing: an empty venv, ``pip install -c constraints.txt ./shared ./packages/<paper>``, then import."""
    py = _venv_python(tmp_path / "venv")
    subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            str(ROOT / "constraints.txt"),
            str(ROOT / "shared"),
            str(pkg.root),
        ],
        check=True,
        timeout=1800,
    )
    subprocess.run([str(py), "-c", f"import {pkg.name}.cli"], check=True, timeout=600, cwd=tmp_path)


# ------------------------------------------------------------------------------------------ 2. configs parse
@pytest.mark.parametrize(("pkg", "config"), configs_params())
def test_config_parses(pkg: Package, config: Path, capsys):
    text = config.read_text()
    assert "seed_everything:" in text, f"{config} must set seed_everything to an integer"
    with pytest.raises(SystemExit) as exc:
        run_cli(pkg.name, ["fit", "--config", str(config), "--print_config"])
    assert exc.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path" in printed
    seed = [line for line in printed.splitlines() if line.startswith("seed_everything:")]
    assert seed and seed[0].split(":")[1].strip().lstrip("-").isdigit(), seed


# -------------------------------------------------------------------------------------- 3. fit + test on CPU
@by_package()
def test_fit_then_test_cpu(pkg: Package):
    cfg = str(pkg.contract_config)
    fit = run_cli(pkg.name, ["fit", "--config", cfg, *TINY])
    log_dir = Path(fit.trainer.log_dir)
    assert (log_dir / "config.yaml").is_file() and (log_dir / "metrics.csv").is_file()
    assert log_dir.parent.name == pkg.contract_config.stem  # runs/<paper>/<experiment>/version_N
    ckpt = checkpoints(pkg.name)
    assert len(ckpt) == 1
    test = run_cli(pkg.name, ["test", "--config", cfg, *TINY, "--ckpt_path", str(ckpt[0])])
    assert test.trainer.callback_metrics, "test logged no metric"
    assert all(torch.isfinite(v).all() for v in test.trainer.callback_metrics.values())


# ----------------------------------------------------------------------------------------------- 4. resume
@by_package()
def test_resume_is_bit_exact(pkg: Package):
    cfg = str(pkg.contract_config)
    args = ["fit", "--config", cfg, *TINY[1:], "--trainer.limit_train_batches=3"]
    full = run_cli(pkg.name, [*args, "--trainer.max_epochs=2", "--experiment=full"])
    half = run_cli(pkg.name, [*args, "--trainer.max_epochs=1", "--experiment=half"])
    half_ckpt = half.trainer.checkpoint_callback.last_model_path or half.trainer.checkpoint_callback.best_model_path
    resumed = run_cli(pkg.name, [*args, "--trainer.max_epochs=2", "--experiment=resumed", "--ckpt_path", half_ckpt])
    assert resumed.trainer.global_step == full.trainer.global_step > half.trainer.global_step
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"resumed run differs from the uninterrupted one in {differ[:5]}"


# ------------------------------------------------------------------------------------------------- 5. DDP
@by_package(slow_unless_example=True)
def test_ddp_two_processes_cpu(pkg: Package, tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        f"{pkg.name}.cli",
        "fit",
        "--config",
        str(pkg.contract_config),
        *TINY,
        "--trainer.accelerator=cpu",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert checkpoints(pkg.name), "DDP run wrote no checkpoint"


# ------------------------------------------------------------------------------------------- 6. bad input
@by_package()
def test_missing_dataset_is_clear_and_leaves_nothing(pkg: Package, tmp_path: Path, capsys):
    if pkg.missing_data_config is None:
        pytest.fail(f"{pkg.name}: set [tool.reprokit] missing-data-config in its pyproject")
    missing = tmp_path / "no-such-dataset"
    last = expect_user_error(
        pkg,
        ["fit", "--config", str(pkg.missing_data_config), f"--data.init_args.data_dir={missing}", *TINY],
        capsys,
        "not found",
        str(missing),
    )
    assert "Traceback" not in last
    assert not run_dirs(pkg.name), "a failed run left a run folder behind"


@by_package()
def test_corrupt_checkpoint(pkg: Package, tmp_path: Path, capsys):
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    expect_user_error(
        pkg,
        ["test", "--config", str(pkg.contract_config), *TINY, "--ckpt_path", str(bad)],
        capsys,
        "corrupt.ckpt",
        "cannot be read",
    )
    assert not run_dirs(pkg.name)


@by_package()
def test_mismatched_checkpoint(pkg: Package, tmp_path: Path, capsys):
    fit = run_cli(pkg.name, ["fit", "--config", str(pkg.contract_config), *TINY, "--trainer.limit_train_batches=1"])
    ckpt = torch.load(checkpoints(pkg.name)[0], map_location="cpu", weights_only=False)
    key = next(k for k, v in ckpt["state_dict"].items() if v.ndim >= 1 and v.numel() > 1)
    ckpt["state_dict"][key] = ckpt["state_dict"][key].flatten()[:-1].clone()
    ckpt["state_dict"]["not_a_parameter_of_this_model"] = torch.zeros(1)
    bad = tmp_path / "mismatched.ckpt"
    torch.save(ckpt, bad)
    before = run_dirs(pkg.name)
    expect_user_error(
        pkg,
        ["test", "--config", str(pkg.contract_config), *TINY, "--ckpt_path", str(bad)],
        capsys,
        "does not match",
        key,
    )
    assert run_dirs(pkg.name) == before
    del fit


@by_package()
@pytest.mark.parametrize("bad", ["--trainer.max_epochs=abc", "--seed_everything=not-a-seed", "--no_such_option=1"])
def test_invalid_config_value(pkg: Package, bad: str, capsys):
    with pytest.raises(SystemExit) as exc:
        main(pkg.name, ["fit", "--config", str(pkg.contract_config), bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert len(err.splitlines()) < 15, err


# ---------------------------------------------------------------------------------------- 7. reproduce --quick
@by_package()
def test_reproduce_cpu_quick_writes_outputs(pkg: Package, tmp_path: Path):
    out = tmp_path / "results"
    run_cli(pkg.name, ["reproduce", "--scale", "cpu", "--quick", "--out", str(out)])
    jsons = list(out.rglob("*.json"))
    assert jsons and list(out.rglob("*.md")) and list(out.rglob("*.png")), sorted(out.rglob("*"))
    for path in jsons:
        payload = json.loads(path.read_text())
        if "metrics" not in payload:
            continue
        assert payload["scale"] == "cpu-quick"
        assert payload["data"]["kind"] == "offline" and "analogue" in payload["data"]["label"]
        assert payload["meta"]["git_sha"] and payload["meta"]["machine"]["cpu"]
    rows = [c for c in check(out, pkg.root / "expected") if c.row.scale == "cpu-quick"]
    bad = [f"{c.row.metric}: {c.status} ({c.measured})" for c in rows if c.status in ("off", "missing")]
    assert not bad, bad
