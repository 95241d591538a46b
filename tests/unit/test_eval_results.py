import json

import pytest

from kinject.errors import UserError
from kinject.eval.results import ResultRow, metric_rows, read_results, results_table, write_results


def row(method, dataset, metric, value, n=10, split="dev"):
    return ResultRow(method=method, dataset=dataset, split=split, metric=metric, value=value, n=n)


def test_write_upserts_and_reads_back(tmp_path):
    write_results(tmp_path, [row("base", "materials", "em", 0.1), row("base", "materials", "f1", 0.2)])
    write_results(tmp_path, [row("base", "materials", "em", 0.3), row("gag", "materials", "em", 0.9)])
    rows = read_results(tmp_path / "results.jsonl")
    assert [(r.method, r.metric, r.value) for r in rows] == [
        ("base", "em", 0.3), ("base", "f1", 0.2), ("gag", "em", 0.9)]
    raw = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert set(raw[0]) == {"method", "dataset", "split", "metric", "value", "n"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    write_results(tmp_path, [row("x", "y", "em", 1.0)], append=False)
    assert len(read_results(tmp_path)) == 1


def test_metric_rows_and_replacing_writes_keep_rows_as_given(tmp_path):
    rows = metric_rows("gag", "materials", "dev", {"em": 0.123456, "f1": 0.5}, 8, ndigits=4)
    assert [(r.metric, r.value, r.n) for r in rows] == [("em", 0.1235, 8), ("f1", 0.5, 8)]
    # a replacing write holds exactly the given rows, in order (two domains may share a dataset name)
    write_results(tmp_path / "results.jsonl", [*rows, rows[0]], append=False)
    assert read_results(tmp_path) == [*rows, rows[0]]


def test_bad_rows_are_user_errors(tmp_path):
    p = tmp_path / "results.jsonl"
    p.write_text('{"method": "a", "dataset": "b", "split": "c", "metric": "em", "value": "high", "n": 1}\n')
    with pytest.raises(UserError, match="row 1: bad results row \\(value"):
        read_results(p)


def test_table_rows_methods_columns_dataset_metric():
    from rich.console import Console

    rows = [row("base", "materials", "em", 0.1), row("base", "wiki", "has_answer", 0.5),
            row("gag", "materials", "em", 0.912), row("base", "materials", "latency_ms_p50", 12.34)]
    table = results_table(rows)
    assert [c.header for c in table.columns] == ["method", "materials\nem", "wiki\nhas_answer",
                                                 "materials\nms/q p50"]
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "0.912" in text and "12.3" in text
    gag_line = next(ln for ln in text.splitlines() if "gag" in ln)
    assert gag_line.count("-") == 2  # gag has no wiki or latency cell


def test_print_splits_by_dataset_when_too_wide(monkeypatch, capsys):
    from kinject.eval.results import print_results

    rows = [row(m, d, k, 0.5) for m in ("base", "gag") for d in ("materials", "adjuvant")
            for k in ("em", "f1", "has_answer", "rouge")]
    monkeypatch.setenv("COLUMNS", "200")
    print_results(rows)
    wide = capsys.readouterr().out
    assert "materials (dev)" not in wide and wide.count("base") == 1
    monkeypatch.setenv("COLUMNS", "70")
    print_results(rows)
    narrow = capsys.readouterr().out
    assert "materials (dev)" in narrow and "adjuvant (dev)" in narrow and narrow.count("base") == 2
    assert "has_answer" in narrow and "…" not in narrow  # full metric names, no truncation
