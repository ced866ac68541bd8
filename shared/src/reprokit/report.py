"""Static HTML report: one card per paper on an index page, one page per paper.

``python -m reprokit.report --results results --packages packages --out reports`` reads every results JSON and PNG
under ``results/<paper>/`` and each package's ``expected/*.json`` and README title, and writes plain HTML + CSS (no
CDN, works offline) with the figures copied alongside. A paper with no results gets a "not run yet" page with the
command that produces them.
"""

from __future__ import annotations

import argparse
import html
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reprokit.results import CheckedRow, atomic_write_text, check, find_results, load_expected

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
header{background:#1d232b;color:#fff;padding:18px 32px}header a{color:#9cc3ff}
main{padding:24px 32px;max-width:1200px}
h1{margin:0;font-size:22px}h2{font-size:18px;margin-top:32px}h3{font-size:15px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:16px}
.card{background:#fff;border-radius:8px;padding:16px;box-shadow:0 1px 3px rgba(0,0,0,.1)}
.card h2{margin:0 0 6px;font-size:16px}.card a{text-decoration:none;color:#0b5cad}
.meta{color:#5b6573;font-size:12px}.badge{display:inline-block;padding:2px 8px;border-radius:10px;font-size:12px}
.not-run{background:#eee;color:#555}.cpu-quick{background:#fff3cd;color:#7a5b00}.cpu{background:#d9ecff;color:#0b4f8a}
.paper{background:#d4f5dd;color:#17612d}
table{border-collapse:collapse;background:#fff;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #dde1e6;padding:4px 10px;text-align:left}th{background:#eef1f4}
.pass{color:#17612d;font-weight:600}.off,.missing{color:#b3261e;font-weight:600}.notrun{color:#777}
figure{display:inline-block;margin:8px;background:#fff;padding:8px;border-radius:6px}
figure img{max-width:520px;display:block}figcaption{font-size:12px;color:#5b6573}
code{background:#eef1f4;padding:1px 4px;border-radius:3px}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 12px;font-size:13px}
"""

SCALE_ORDER = ("paper", "cpu", "cpu-quick")


@dataclass
class PaperReport:
    """Everything the report shows for one paper."""

    name: str
    title: str
    results: dict[tuple[str, str], dict] = field(default_factory=dict)
    checked: list[CheckedRow] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    expected_error: str | None = None

    @property
    def best_scale(self) -> str | None:
        """The most complete scale that has results."""
        scales = {scale for _, scale in self.results}
        return next((s for s in SCALE_ORDER if s in scales), None)


def _title(pkg_dir: Path) -> str:
    readme = pkg_dir / "README.md"
    if readme.is_file():
        for line in readme.read_text(errors="replace").splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return pkg_dir.name


def collect(results_root: Path, pkg_dir: Path) -> PaperReport:
    """Gather results, expected-number check and figures for one package."""
    rep = PaperReport(pkg_dir.name, _title(pkg_dir))
    res_dir = results_root / pkg_dir.name
    if res_dir.is_dir():
        rep.results = find_results(res_dir)
        rep.figures = sorted(res_dir.rglob("*.png"))
    if (pkg_dir / "expected").is_dir():
        try:
            rep.checked = (
                check(res_dir, pkg_dir / "expected")
                if res_dir.is_dir()
                else [CheckedRow(row, None, "not run") for row in load_expected(pkg_dir / "expected")]
            )
        except ValueError as err:
            rep.expected_error = str(err)
    return rep


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.4g}"
    return _e(value)


def _page(title: str, body: str, back: bool = True) -> str:
    nav = '<a href="index.html">← all papers</a>' if back else "Renzulli et al. — reproducible packages"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
        f"<body><header><h1>{_e(title)}</h1><div>{nav}</div></header><main>{body}</main></body></html>\n"
    )


def _badge(scale: str | None) -> str:
    if scale is None:
        return '<span class="badge not-run">not run yet</span>'
    label = {"paper": "paper scale", "cpu": "CPU-scale analogue", "cpu-quick": "quick CPU-scale analogue"}[scale]
    return f'<span class="badge {scale}">{label}</span>'


def _newest(rep: PaperReport) -> dict | None:
    scale = rep.best_scale
    if scale is None:
        return None
    return next(p for (_, s), p in sorted(rep.results.items()) if s == scale)


def _headline(rep: PaperReport) -> str:
    """One line comparing the paper's number with ours, or the first checked claim."""
    ours = {(c.row.results, c.row.metric): c for c in rep.checked if c.status != "not run"}
    for c in rep.checked:
        if c.row.scale == "paper":
            mine = next((o for (r, m), o in ours.items() if r == c.row.results and m == c.row.metric), None)
            if mine is not None:
                return (
                    f"{_e(c.row.metric)}: paper {_num(c.row.value)} · ours ({_e(mine.row.scale)}) {_num(mine.measured)}"
                )
    ran = [c for c in rep.checked if c.status != "not run"]
    if ran:
        c = ran[0]
        return (
            f"{_e(c.row.metric)} = {_num(c.measured)} ({_e(c.row.scale)}, <span class='{c.status}'>{c.status}</span>)"
        )
    return "—"


def _card(rep: PaperReport) -> str:
    newest = _newest(rep)
    if newest is None:
        meta = f"Run it: <code>make reproduce-{_e(rep.name)} SCALE=cpu</code> or <code>make demo</code>"
    else:
        m = newest.get("meta", {})
        data = newest.get("data", {})
        meta = (
            f"data: {_e(data.get('name', '?'))} ({_e(data.get('label', ''))})<br>"
            f"{_e(m.get('created', ''))} · git {_e(str(m.get('git_sha', '?'))[:12])} · "
            f"{_e(m.get('machine', {}).get('accelerator', '?'))} / {_e(m.get('machine', {}).get('cpu', '?'))}"
        )
    counts = {s: sum(c.status == s for c in rep.checked) for s in ("pass", "off", "missing")}
    checks = " · ".join(f'<span class="{s}">{n} {s}</span>' for s, n in counts.items() if n)
    return (
        f'<div class="card"><h2><a href="{_e(rep.name)}.html">{_e(rep.title)}</a></h2>'
        f"<div>{_badge(rep.best_scale)} <code>{_e(rep.name)}</code></div>"
        f"<p>{_headline(rep)}</p><p>{checks or ''}</p><div class='meta'>{meta}</div></div>"
    )


def _results_tables(rep: PaperReport) -> str:
    parts = []
    for (name, scale), payload in sorted(
        rep.results.items(), key=lambda kv: (SCALE_ORDER.index(kv[0][1]) if kv[0][1] in SCALE_ORDER else 9, kv[0][0])
    ):
        table = payload.get("table", {})
        cols = table.get("columns", [])
        keys = [c if isinstance(c, str) else c[0] for c in cols]
        heads = [c if isinstance(c, str) else c[1] for c in cols]
        data = payload.get("data", {})
        meta = payload.get("meta", {})
        parts.append(
            f"<h3>{_e(name)} {_badge(scale)}</h3>"
            f"<div class='meta'>data: {_e(data.get('name', '?'))} ({_e(data.get('label', ''))}) · "
            f"git {_e(str(meta.get('git_sha', '?'))[:12])} · {_e(meta.get('created', ''))} · "
            f"wall time {_num(meta.get('wall_time_s'))} s</div>"
        )
        if keys and table.get("rows"):
            rows = "".join(
                "<tr>" + "".join(f"<td>{_num(r.get(k))}</td>" for k in keys) + "</tr>" for r in table["rows"]
            )
            parts.append("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in heads) + f"</tr>{rows}</table>")
        else:
            rows = "".join(
                f"<tr><td>{_e(k)}</td><td>{_num(v)}</td></tr>" for k, v in payload.get("metrics", {}).items()
            )
            parts.append(f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>")
    return "".join(parts)


def _measured(rep: PaperReport, results: str, metric: str, scales: Sequence[str]) -> tuple[Any, str | None]:
    """The value of ``metric`` in the first results file of ``results`` found at one of ``scales``."""
    for scale in scales:
        payload = rep.results.get((results, scale))
        if payload is not None and payload.get("metrics", {}).get(metric) is not None:
            return payload["metrics"][metric], scale
    return None, None


def _comparison(rep: PaperReport) -> str:
    """Paper's number | ours at paper scale | ours at CPU scale, for every metric an expected row names."""
    keys: dict[tuple[str, str], float | None] = {}
    for c in rep.checked:
        key = (c.row.results, c.row.metric)
        if c.row.scale == "paper":
            keys[key] = c.row.value
        else:
            keys.setdefault(key, None)
    if not keys:
        return "<p>No expected numbers yet.</p>"
    rows = []
    for (res, metric), paper_value in keys.items():
        ours_paper, _ = _measured(rep, res, metric, ("paper",))
        ours_cpu, cpu_scale = _measured(rep, res, metric, ("cpu", "cpu-quick"))
        cpu_cell = "not run" if cpu_scale is None else f"{_num(ours_cpu)} ({_e(cpu_scale)})"
        rows.append(
            f"<tr><td>{_e(res)}</td><td>{_e(metric)}</td><td>{_num(paper_value)}</td>"
            f"<td>{'not run' if ours_paper is None else _num(ours_paper)}</td><td>{cpu_cell}</td></tr>"
        )
    return (
        "<table><tr><th>results</th><th>metric</th><th>paper's number</th><th>ours, paper scale</th>"
        "<th>ours, CPU-scale analogue</th></tr>" + "".join(rows) + "</table>"
    )


def _check_table(rep: PaperReport) -> str:
    if rep.expected_error:
        return f"<p class='off'>expected files unreadable: {_e(rep.expected_error)}</p>"
    rows = []
    for c in rep.checked:
        r = c.row
        want = {"~": f"{r.value:.4g} ± {r.tol:.2g}", ">=": f"≥ {r.value - r.tol:.4g}", "<=": f"≤ {r.value + r.tol:.4g}"}
        cls = c.status.replace(" ", "")
        delta = "" if c.delta is None else f"{c.delta:+.4g}"
        rows.append(
            f"<tr><td class='{cls}'>{_e(c.status)}</td><td>{_e(r.results)}:{_e(r.metric)}</td>"
            f"<td>{_e(r.scale)}</td><td>{_e(want[r.op])}</td><td>{_num(c.measured)}</td><td>{delta}</td>"
            f"<td>{_e(r.source)}</td></tr>"
        )
    if not rows:
        return "<p>No expected rows.</p>"
    return (
        "<table><tr><th>status</th><th>metric</th><th>scale</th><th>expected</th><th>measured</th><th>Δ</th>"
        "<th>source</th></tr>" + "".join(rows) + "</table>"
    )


def paper_page(rep: PaperReport, out: Path) -> str:
    """HTML of one paper's page; copies its figures to ``out/<paper>/``."""
    if not rep.results:
        body = (
            f"<p>{_badge(None)}</p><p>No results for <code>{_e(rep.name)}</code> yet. Produce them with "
            f"<code>make reproduce-{_e(rep.name)} SCALE=cpu</code> (offline CPU-scale analogue), "
            f"<code>make reproduce-{_e(rep.name)}</code> (paper scale, real data) or <code>make demo</code>, "
            f"then <code>make report</code>.</p><h2>Expected numbers</h2>{_check_table(rep)}"
        )
        return _page(rep.title, body)
    figs = []
    fig_dir = out / rep.name
    for png in rep.figures:
        dest = fig_dir / png.name
        fig_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(png, dest)
        figs.append(
            f'<figure><img src="{_e(rep.name)}/{_e(png.name)}" alt="{_e(png.stem)}">'
            f"<figcaption>{_e(png.stem)}</figcaption></figure>"
        )
    offline = any(p.get("data", {}).get("kind") == "offline" for p in rep.results.values())
    note = (
        "<p class='note'>Numbers marked CPU-scale come from the offline analogue (procedural or bundled data, "
        "small models): they test the method's claims at small scale and are not the paper's numbers.</p>"
        if offline
        else ""
    )
    body = (
        f"{note}<h2>Paper vs ours</h2>{_comparison(rep)}<h2>Expected-number check</h2>{_check_table(rep)}"
        f"<h2>Results</h2>{_results_tables(rep)}<h2>Figures</h2>{''.join(figs) or '<p>No figures.</p>'}"
    )
    return _page(rep.title, body)


def build(results_root: Path, package_dirs: Sequence[Path], out: Path) -> Path:
    """Write ``out/index.html`` and one page per package; returns the index path."""
    out.mkdir(parents=True, exist_ok=True)
    reports = [collect(results_root, d) for d in package_dirs]
    for rep in reports:
        atomic_write_text(out / f"{rep.name}.html", paper_page(rep, out))
    cards = "".join(_card(r) for r in reports) or "<p>No packages found.</p>"
    intro = (
        "<p>One card per paper: the most complete results available (paper scale, CPU-scale analogue or its "
        "quick version), the headline comparison and the expected-number check. Regenerate with "
        "<code>make report</code>.</p>"
    )
    return atomic_write_text(
        out / "index.html", _page("Reproduction report", intro + f"<div class='cards'>{cards}</div>", back=False)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reprokit.report --results results --packages packages --out reports``."""
    parser = argparse.ArgumentParser(prog="python -m reprokit.report", description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument(
        "--packages",
        type=Path,
        nargs="+",
        default=[Path("packages")],
        help="folders holding packages (each with a pyproject.toml), or package folders themselves",
    )
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    dirs: list[Path] = []
    for p in args.packages:
        if (p / "pyproject.toml").is_file():
            dirs.append(p)
        else:
            dirs += sorted(d.parent for d in p.glob("*/pyproject.toml"))
    index = build(args.results, dirs, args.out)
    print(f"report: {index} ({len(dirs)} paper(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build", "collect", "main", "paper_page"]
