"""The static report: content checks, and a real headless-Chromium load of the built pages."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from contract import ROOT
from reprokit.plotting import figure, save_png
from reprokit.report import build
from reprokit.results import data_info, run_metadata, write_results

EXAMPLE = ROOT / "tests" / "example_paper"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    write_results(
        results / "example_paper",
        "digits",
        paper="example_paper",
        scale="cpu-quick",
        data=data_info("offline", "sklearn digits"),
        metrics={"test_acc.mean": 0.93, "test_acc.std": 0.01},
        rows=[{"seed": 0, "test_acc": 0.93}],
        columns=[("seed", "seed"), ("test_acc", "test accuracy")],
        meta=run_metadata(seed=[0]),
    )
    fig, ax = figure()
    ax[0, 0].bar(["0"], [0.93])
    save_png(fig, results / "example_paper" / "digits_acc.png")
    empty = tmp_path / "packages" / "not_run_paper"
    (empty / "expected").mkdir(parents=True)
    (empty / "pyproject.toml").write_text("[project]\nname='x'\n")
    (empty / "README.md").write_text("# A paper without results\n")
    (empty / "expected" / "t.json").write_text(
        '{"results": "t", "rows": [{"metric": "psnr", "value": 33.1, "scale": "paper", "source": "paper Table 1"}]}'
    )
    out = tmp_path / "reports"
    build(results, [EXAMPLE, empty], out)
    return out


def test_report_content(site: Path):
    index = (site / "index.html").read_text()
    assert index.count('class="card"') == 2
    assert "example_paper.html" in index and "not_run_paper.html" in index
    assert "quick CPU-scale analogue" in index and "not run yet" in index
    page = (site / "example_paper.html").read_text()
    assert "<table>" in page and 'src="example_paper/digits_acc.png"' in page
    assert (site / "example_paper" / "digits_acc.png").is_file()
    assert "1 pass" in index or "pass" in page  # the cpu-quick expected row of the example holds (0.93 >= 0.5)
    empty = (site / "not_run_paper.html").read_text()
    assert "not run yet" in empty and "make reproduce-not_run_paper SCALE=cpu" in empty and "33.1" in empty
    assert "http://" not in index + page and "https://" not in index + page  # no CDN: works offline


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_in_headless_chromium(site: Path, tmp_path: Path):
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]

    def dom(page: str) -> str:
        proc = subprocess.run(
            [_chromium(), *flags, "--dump-dom", (site / page).as_uri()], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    index = dom("index.html")
    assert index.count('class="card"') == 2 and "Reproduction report" in index
    page = dom("example_paper.html")
    assert "<table>" in page and "<img" in page and "test accuracy" in page
    shot = tmp_path / "example_paper.png"
    proc = subprocess.run(
        [_chromium(), *flags, "--window-size=1280,900", f"--screenshot={shot}", (site / "example_paper.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and shot.read_bytes()[:4] == b"\x89PNG"
