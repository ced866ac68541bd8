import itertools

import numpy as np
import pandas as pd
import pytest
from corsa.reader_study import ReaderStudyError, analyse, load_reads, mcnemar_exact, simulate_reads, wilson_ci
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

# Two readers, four cases (truth 1, 1, 0, 0), each read without (ai=0) and with (ai=1) the aid.
TABLE = pd.DataFrame(
    [
        # reader, case, ai, decision, truth, time_s
        ("A", "c1", 0, 1, 1, 30.0), ("A", "c1", 1, 1, 1, 20.0),
        ("A", "c2", 0, 0, 1, 40.0), ("A", "c2", 1, 1, 1, 31.0),
        ("A", "c3", 0, 1, 0, 35.0), ("A", "c3", 1, 0, 0, 30.0),
        ("A", "c4", 0, 0, 0, 50.0), ("A", "c4", 1, 0, 0, 44.0),
        ("B", "c1", 0, 0, 1, 60.0), ("B", "c1", 1, 1, 1, 45.0),
        ("B", "c2", 0, 1, 1, 20.0), ("B", "c2", 1, 1, 1, 25.0),
        ("B", "c3", 0, 0, 0, 30.0), ("B", "c3", 1, 1, 0, 22.0),
        ("B", "c4", 0, 0, 0, 33.0), ("B", "c4", 1, 0, 0, 30.0),
    ],
    columns=["reader", "case", "ai", "decision", "truth", "time_s"],
)  # fmt: skip


def test_per_reader_rates_by_hand():
    reads, bad = load_reads(TABLE)
    assert not bad
    rows = {r["reader"]: r for r in analyse(reads)}
    a, b, pooled = rows["A"], rows["B"], rows["pooled"]
    assert (a["sens_noai"], a["spec_noai"], a["acc_noai"]) == (0.5, 0.5, 0.5)
    assert (a["sens_ai"], a["spec_ai"], a["acc_ai"]) == (1.0, 1.0, 1.0)
    assert (b["sens_noai"], b["spec_noai"], b["sens_ai"], b["spec_ai"]) == (0.5, 1.0, 1.0, 0.5)
    assert pooled["acc_noai"] == 5 / 8 and pooled["acc_ai"] == 7 / 8
    # Reader A: c2 and c3 wrong without, right with -> b=0 (only unaided correct), c=2.
    assert (a["mcnemar_b"], a["mcnemar_c"]) == (0, 2)
    assert (b["mcnemar_b"], b["mcnemar_c"]) == (1, 1)


def test_mcnemar_matches_statsmodels():
    for b, c in [(0, 2), (3, 9), (10, 4), (7, 7), (0, 0), (1, 15)]:
        expected = mcnemar(np.array([[5, b], [c, 6]]), exact=True).pvalue
        assert abs(mcnemar_exact(b, c) - expected) < 1e-12


def test_wilson_matches_statsmodels():
    for k, n in [(0, 10), (3, 10), (47, 60), (60, 60)]:
        lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert np.allclose(wilson_ci(k, n), (lo, hi), atol=1e-12)


def test_wilcoxon_against_enumerated_exact_distribution():
    reads, _ = load_reads(TABLE)
    pooled = analyse(reads)[-1]
    wide = TABLE.pivot_table(index=["reader", "case"], columns="ai", values="time_s")
    diff = (wide[1] - wide[0]).to_numpy()
    ranks = pd.Series(np.abs(diff)).rank().to_numpy()
    w_plus = ranks[diff > 0].sum()
    # Exact null distribution: every sign pattern of the 8 ranks is equally likely.
    sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=len(ranks))]
    w = min(w_plus, ranks.sum() - w_plus)
    p = min(1.0, 2 * np.mean([s <= w for s in sums]))
    assert abs(pooled["wilcoxon_p"] - p) < 1e-12


def test_bad_rows_are_named(tmp_path):
    path = tmp_path / "reads.csv"
    bad = TABLE.astype(str).copy()
    bad.loc[1, "ai"] = "maybe"
    bad.loc[4, "time_s"] = "-3"
    bad.loc[6, "decision"] = "2"
    bad = pd.concat([bad, bad.iloc[[0]]])  # a duplicate read
    bad.to_csv(path, index=False)
    with pytest.raises(ReaderStudyError) as err:
        load_reads(path)
    lines = [line for line, _ in err.value.bad_rows]
    assert lines == [3, 6, 8, 18]
    assert "ai='maybe'" in str(err.value) and "duplicate" in str(err.value)
    clean, dropped = load_reads(path, on_bad="drop")
    assert len(clean) == 13 and len(dropped) == 4
    with pytest.raises(ReaderStudyError, match="lacks columns"):
        load_reads(TABLE.drop(columns="truth"))


def test_simulation_follows_its_model():
    reads = simulate_reads(n_readers=3, n_cases=200, trust=1.0, time_factor=0.5, seed=3)
    clean, bad = load_reads(reads)
    assert not bad and len(clean) == 3 * 200 * 2
    aided = clean[clean.ai == 1]
    # trust=1: every aided call equals the AI's, so all readers agree with each other on every case.
    assert (aided.groupby("case").decision.nunique() == 1).all()
    pooled = analyse(clean)[-1]
    assert 0.4 < pooled["time_ratio_median"] < 0.6
