"""Clinical validation: radiologists read the same cases without and with the AI aid.

Input: a CSV with one row per read, columns ``reader, case, ai, decision, truth, time_s`` (``ai``: 0/1, true/false,
yes/no or without/with; ``decision`` and ``truth``: 0/1, 1 = COVID pneumonia; ``time_s``: reading time in seconds).
:func:`load_reads` validates it and names every bad row; :func:`analyse` gives per-reader and pooled sensitivity,
specificity and accuracy without and with AI (Wilson 95% intervals), exact McNemar tests on the paired correctness
of each case, and Wilcoxon signed-rank tests on the paired reading times.

:func:`simulate_reads` writes a *simulated* study from a stated model of reader behaviour (the paper's reads are not
public): each reader has their own sensitivity and specificity; with the aid, when the AI disagrees with the
reader's own call the reader switches to the AI's call with probability ``trust``; reading times are log-normal per
reader and case, multiplied by ``time_factor`` with the aid.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

COLUMNS = ("reader", "case", "ai", "decision", "truth", "time_s")
_AI_VALUES = {"0": 0, "1": 1, "false": 0, "true": 1, "no": 0, "yes": 1, "without": 0, "with": 1}


class ReaderStudyError(ValueError):
    """The reads CSV has problems; ``bad_rows`` holds ``(line number, reason)`` for each bad row."""

    def __init__(self, message: str, bad_rows: list[tuple[int, str]] = ()):
        self.bad_rows = list(bad_rows)
        shown = "; ".join(f"line {line}: {why}" for line, why in self.bad_rows[:10])
        more = f" (and {len(self.bad_rows) - 10} more)" if len(self.bad_rows) > 10 else ""
        super().__init__(message + (f": {shown}{more}" if shown else ""))


@dataclass(frozen=True)
class BadRow:
    """A row dropped by :func:`load_reads` with ``on_bad="drop"``."""

    line: int
    reason: str


def _binary(value) -> int | None:
    text = str(value).strip().lower()
    if text in ("0", "1", "0.0", "1.0"):
        return int(float(text))
    return None


def load_reads(source: str | os.PathLike | pd.DataFrame, on_bad: str = "raise") -> tuple[pd.DataFrame, list[BadRow]]:
    """Read and validate a reads table.

    Args:
        source: CSV path or a DataFrame with :data:`COLUMNS`.
        on_bad: ``"raise"`` (:class:`ReaderStudyError` naming every bad row) or ``"drop"`` (return them).

    Returns:
        ``(clean DataFrame with ai/decision/truth as int and time_s as float, bad rows)``. Line numbers count the
        header as line 1, as an editor shows them.
    """
    df = source.copy() if isinstance(source, pd.DataFrame) else pd.read_csv(source, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ReaderStudyError(f"reads table lacks columns {missing}; it needs {list(COLUMNS)}")
    bad: list[BadRow] = []
    rows = []
    for pos, rec in enumerate(df[list(COLUMNS)].itertuples(index=False)):
        line = pos + 2
        reasons = []
        ai = _AI_VALUES.get(str(rec.ai).strip().lower())
        decision, truth = _binary(rec.decision), _binary(rec.truth)
        try:
            time_s = float(rec.time_s)
        except (TypeError, ValueError):
            time_s = float("nan")
        if not str(rec.reader).strip() or not str(rec.case).strip():
            reasons.append("empty reader or case")
        if ai is None:
            reasons.append(f"ai={rec.ai!r} is not one of {sorted(set(_AI_VALUES))}")
        if decision is None:
            reasons.append(f"decision={rec.decision!r} is not 0/1")
        if truth is None:
            reasons.append(f"truth={rec.truth!r} is not 0/1")
        if not (math.isfinite(time_s) and time_s > 0):
            reasons.append(f"time_s={rec.time_s!r} is not a positive number")
        if reasons:
            bad.append(BadRow(line, "; ".join(reasons)))
            continue
        rows.append((str(rec.reader).strip(), str(rec.case).strip(), ai, decision, truth, time_s, line))
    clean = pd.DataFrame(rows, columns=[*COLUMNS, "line"])
    dup = clean.duplicated(["reader", "case", "ai"], keep="first")
    bad += [BadRow(int(r.line), f"duplicate read of case {r.case} by {r.reader}") for r in clean[dup].itertuples()]
    clean = clean[~dup]
    n_truth = clean.groupby("case")["truth"].nunique()
    conflicted = set(n_truth[n_truth > 1].index)
    bad += [
        BadRow(int(r.line), f"case {r.case} has conflicting truth") for r in clean.itertuples() if r.case in conflicted
    ]
    clean = clean[~clean["case"].isin(conflicted)]
    bad.sort(key=lambda b: b.line)
    if bad and on_bad == "raise":
        raise ReaderStudyError(f"{len(bad)} bad row(s) in the reads table", [(b.line, b.reason) for b in bad])
    return clean.drop(columns="line").reset_index(drop=True), bad


def wilson_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (NaNs when ``n == 0``)."""
    if n == 0:
        return float("nan"), float("nan")
    z = stats.norm.ppf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` (only first correct) and ``c``."""
    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2 * stats.binom.cdf(min(b, c), n, 0.5)))


def _rates(d: pd.DataFrame) -> dict[str, float]:
    pos, neg = d[d.truth == 1], d[d.truth == 0]
    out = {}
    for name, sub, hit in (
        ("sens", pos, pos.decision == 1),
        ("spec", neg, neg.decision == 0),
        ("acc", d, d.decision == d.truth),
    ):
        k, n = int(hit.sum()), len(sub)
        out[name] = k / n if n else float("nan")
        out[f"{name}_lo"], out[f"{name}_hi"] = wilson_ci(k, n)
    out["median_time_s"] = float(d.time_s.median()) if len(d) else float("nan")
    return out


def _paired_tests(d: pd.DataFrame) -> dict[str, float]:
    wide = d.pivot_table(index=["reader", "case"], columns="ai", values=["decision", "time_s"], aggfunc="first")
    wide = wide.dropna()
    truth = d.groupby("case")["truth"].first()
    cases = wide.index.get_level_values("case")
    correct0 = wide[("decision", 0)].to_numpy() == truth.loc[cases].to_numpy()
    correct1 = wide[("decision", 1)].to_numpy() == truth.loc[cases].to_numpy()
    b, c = int((correct0 & ~correct1).sum()), int((~correct0 & correct1).sum())
    t0, t1 = wide[("time_s", 0)].to_numpy(), wide[("time_s", 1)].to_numpy()
    diff = t1 - t0
    wilcoxon_p = float(stats.wilcoxon(t1, t0).pvalue) if np.any(diff != 0) else 1.0
    return {
        "pairs": len(wide),
        "mcnemar_b": b,
        "mcnemar_c": c,
        "mcnemar_p": mcnemar_exact(b, c),
        "time_ratio_median": float(np.median(t1 / t0)) if len(wide) else float("nan"),
        "wilcoxon_p": wilcoxon_p,
    }


def analyse(reads: pd.DataFrame) -> list[dict]:
    """One row per reader and a final ``pooled`` row: rates without (``*_noai``) and with AI, and paired tests.

    Pooled tests treat every (reader, case) pair as one paired observation (they ignore the clustering by reader).
    """
    rows = []
    groups = [(str(r), d) for r, d in reads.groupby("reader", sort=True)] + [("pooled", reads)]
    for reader, d in groups:
        row: dict = {"reader": reader, "cases": int(d.case.nunique())}
        for ai, suffix in ((0, "_noai"), (1, "_ai")):
            row.update({k + suffix: v for k, v in _rates(d[d.ai == ai]).items()})
        row.update(_paired_tests(d))
        rows.append(row)
    return rows


def simulate_reads(
    n_readers: int = 6,
    n_cases: int = 120,
    *,
    prevalence: float = 0.5,
    ai_sens: float = 0.88,
    ai_spec: float = 0.85,
    trust: float = 0.6,
    time_factor: float = 0.85,
    seed: int = 0,
) -> pd.DataFrame:
    """A simulated reads table (see the module docstring for the model). Every number it yields is simulated.

    Args:
        n_readers: Readers.
        n_cases: Cases, each read by every reader without and with the aid.
        prevalence: Share of COVID-positive cases.
        ai_sens: Sensitivity of the simulated AI.
        ai_spec: Specificity of the simulated AI.
        trust: Probability that a reader adopts a disagreeing AI call.
        time_factor: Median reading-time multiplier with the aid.
        seed: Seed.
    """
    rng = np.random.default_rng(seed)
    truth = (rng.random(n_cases) < prevalence).astype(int)
    ai_call = np.where(truth == 1, rng.random(n_cases) < ai_sens, rng.random(n_cases) >= ai_spec).astype(int)
    difficulty = rng.normal(0, 0.3, n_cases)
    records = []
    for r in range(n_readers):
        sens, spec = rng.uniform(0.65, 0.85), rng.uniform(0.7, 0.9)
        base_time = rng.uniform(25, 60)
        own = np.where(truth == 1, rng.random(n_cases) < sens, rng.random(n_cases) >= spec).astype(int)
        follow = rng.random(n_cases) < trust
        aided = np.where((own != ai_call) & follow, ai_call, own)
        t0 = base_time * np.exp(difficulty + rng.normal(0, 0.25, n_cases))
        t1 = t0 * time_factor * np.exp(rng.normal(0, 0.15, n_cases))
        for c in range(n_cases):
            for ai, decision, t in ((0, own[c], t0[c]), (1, aided[c], t1[c])):
                records.append((f"R{r + 1}", f"case{c:04d}", ai, int(decision), int(truth[c]), round(float(t), 2)))
    return pd.DataFrame(records, columns=list(COLUMNS))


def plot_reader_study(rows: list[dict], reads: pd.DataFrame, path: str | os.PathLike, title: str) -> Path:
    """Per-reader sensitivity vs 1 - specificity without -> with AI (arrows), and reading times (boxes)."""
    from reprokit.plotting import COLORS, figure, save_png

    fig, axes = figure(1, 2, width=4.2, height=3.6)
    ax = axes[0, 0]
    for row in rows:
        x0, y0, x1, y1 = 1 - row["spec_noai"], row["sens_noai"], 1 - row["spec_ai"], row["sens_ai"]
        pooled = row["reader"] == "pooled"
        color = COLORS["method"] if pooled else COLORS["baseline"]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "->", "color": color})
        ax.plot([x0], [y0], "o", color=color, ms=4)
        ax.text(x1, y1, f" {row['reader']}", fontsize=7, color=color)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 0.6), ylim=(0.4, 1.0), title="without -> with AI")
    ax = axes[0, 1]
    readers = sorted(reads.reader.unique())
    data = [reads[(reads.reader == r) & (reads.ai == ai)].time_s for r in readers for ai in (0, 1)]
    box = ax.boxplot(data, patch_artist=True, widths=0.6, showfliers=False)
    for k, patch in enumerate(box["boxes"]):
        patch.set_facecolor(COLORS["method"] if k % 2 else COLORS["baseline"])
    ax.set_xticks([2 * k + 1.5 for k in range(len(readers))], readers)
    ax.set(ylabel="reading time (s)", title="grey: without AI, red: with AI")
    fig.suptitle(title, fontsize=9)
    return save_png(fig, path)
