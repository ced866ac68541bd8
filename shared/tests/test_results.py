import json
from pathlib import Path

import pytest
from reprokit.results import (
    atomic_write_json,
    check,
    data_info,
    load_expected,
    main,
    markdown_table,
    scale_name,
    write_results,
)


def test_atomic_write_leaves_only_the_file(tmp_path: Path):
    path = atomic_write_json(tmp_path / "a" / "x.json", {"v": 1.5})
    assert json.loads(path.read_text()) == {"v": 1.5}
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


def test_atomic_write_keeps_old_version_when_serialisation_fails(tmp_path: Path):
    path = atomic_write_json(tmp_path / "x.json", {"v": 1})

    class Boom:
        def __str__(self):
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError):
        atomic_write_json(path, {"v": Boom()})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_markdown_table_hand_case():
    table = markdown_table([{"a": 1, "b": 0.123456, "c": None}, {"a": 2, "b": float("nan")}], ["a", ("b", "B"), "c"])
    assert table.splitlines() == ["| a | B | c |", "|---|---|---|", "| 1 | 0.1235 | – |", "| 2 | n/a | – |"]


def _write(tmp_path, scale="cpu", metrics=None):
    return write_results(
        tmp_path / "results",
        "table",
        paper="demo",
        scale=scale,
        data=data_info("offline", "toy"),
        metrics=metrics or {"acc": 0.95, "gap": 0.004},
        rows=[{"method": "x", "acc": 0.95}],
        columns=["method", "acc"],
    )


def _expected(tmp_path, rows):
    exp = tmp_path / "expected"
    exp.mkdir(exist_ok=True)
    (exp / "table.json").write_text(json.dumps({"results": "table", "rows": rows}))
    return exp


def test_write_results_records_metadata(tmp_path: Path):
    json_path, md_path = _write(tmp_path)
    payload = json.loads(json_path.read_text())
    assert payload["scale"] == "cpu" and payload["data"]["kind"] == "offline"
    assert "analogue" in payload["data"]["label"]
    for key in ("git_sha", "seed", "config", "wall_time_s", "machine", "created"):
        assert key in payload["meta"]
    assert "| method | acc |" in md_path.read_text()


def test_check_statuses(tmp_path: Path):
    _write(tmp_path)
    exp = _expected(
        tmp_path,
        [
            {"metric": "acc", "value": 0.9, "op": ">=", "scale": "cpu", "source": "claim"},
            {"metric": "acc", "value": 0.99, "tol": 0.01, "scale": "cpu", "source": "paper"},
            {"metric": "gap", "value": 0.01, "op": "<=", "scale": "cpu", "source": "claim"},
            {"metric": "nope", "value": 1, "scale": "cpu", "source": "x"},
            {"metric": "acc", "value": 0.99, "tol": 0.01, "scale": "paper", "source": "paper Table 1"},
        ],
    )
    statuses = [(c.row.metric, c.row.scale, c.status) for c in check(tmp_path / "results", exp)]
    assert statuses == [
        ("acc", "cpu", "pass"),
        ("acc", "cpu", "off"),
        ("gap", "cpu", "pass"),
        ("nope", "cpu", "missing"),
        ("acc", "paper", "not run"),
    ]
    off = check(tmp_path / "results", exp)[1]
    assert off.delta == pytest.approx(0.95 - 0.99)


def test_check_cli_exit_codes(tmp_path: Path, capsys):
    _write(tmp_path)
    exp = _expected(tmp_path, [{"metric": "acc", "value": 0.9, "op": ">=", "scale": "cpu", "source": "claim"}])
    assert main(["check", str(tmp_path / "results"), str(exp)]) == 0
    _expected(tmp_path, [{"metric": "acc", "value": 0.99, "op": ">=", "scale": "cpu", "source": "paper Table 2"}])
    assert main(["check", str(tmp_path / "results"), str(exp)]) == 1
    out = capsys.readouterr().out
    assert "OFF" in out and "paper Table 2" in out and "Δ -0.04" in out
    assert main(["check", str(tmp_path / "missing"), str(exp)]) == 2


def test_bad_expected_file_is_reported(tmp_path: Path):
    exp = tmp_path / "expected"
    exp.mkdir()
    (exp / "x.json").write_text('{"results": "t", "rows": [{"metric": "a", "value": 1}]}')
    with pytest.raises(ValueError, match="lacks"):
        load_expected(exp)


def test_scale_name():
    assert scale_name("cpu", True) == "cpu-quick"
    assert scale_name("cpu", False) == "cpu"
    assert scale_name("paper", True) == "paper"
    with pytest.raises(ValueError):
        scale_name("gpu", False)
