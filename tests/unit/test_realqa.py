"""Real QA sets (data/realqa): the harness datasets hotpotqa / 2wiki / nq with per-type columns,
the questions + passages loader and its bad-input errors through `kinject realqa eval`, the
ranking metrics and the corpus mode of `kinject bench retrieval` on a small slice."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from kinject.errors import UserError
from kinject.eval.data import load_questions

from .test_eval_harness import Lookup  # noqa: F401  (registers lookup_k{k})

REPO = Path(__file__).resolve().parents[2]
REALQA = REPO / "data" / "realqa"


def run_cli(capsys, *args) -> tuple[int, str, str]:
    from kinject.cli import main

    old = sys.argv
    sys.argv = ["kinject", *map(str, args)]
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_tsv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["id", "text", "title"])
        w.writerows(rows)
    return path


def small_set(tmp_path: Path) -> tuple[Path, Path]:
    """Four passages, three questions of two types."""
    p = write_tsv(tmp_path / "p.tsv", [
        ["1", "Velmora is the capital of Norland, on the river Esk.", "Velmora"],
        ["2", "Norland is a kingdom in the north with a cold climate.", "Norland"],
        ["3", "The Esk river flows from the mountains into the northern sea.", "Esk"],
        ["4", "Tunthou Biologics developed the vaccine adjuvant Vailhisnal in 2011.", "Tunthou Biologics"],
    ])
    q = write_jsonl(tmp_path / "q.jsonl", [
        {"id": "a:1", "question": "What is the capital of Norland?", "answer": ["Velmora"], "type": "bridge",
         "supporting_pids": ["1", "2"]},
        {"id": "a:2", "question": "Which company developed Vailhisnal?", "answer": ["Tunthou Biologics"],
         "type": "1-hop", "supporting_pids": ["4"]},
        {"id": "a:3", "question": "Which river flows through Velmora?", "answer": "Esk", "type": "bridge",
         "supporting_pids": ["1", "3"]},
    ])
    return q, p


# --- harness datasets ------------------------------------------------------------------------
def test_shipped_datasets_split_by_source_and_type():
    from kinject.config import load_config
    from kinject.eval.config import EvalConfig
    from kinject.eval.harness import column_names, prepare_datasets

    cfg = load_config(REPO / "configs/realqa/eval.yaml", [f"data_root={REALQA}"], expect=EvalConfig)
    ds = {d.name: d for d in prepare_datasets(cfg, "eval.yaml")}
    assert {n: len(d.questions) for n, d in ds.items()} == {"hotpotqa": 275, "2wiki": 261, "nq": 1326}
    assert all(q.id.startswith("hotpotqa:") for q in ds["hotpotqa"].questions)
    assert all(q.id.startswith("2wikimultihopqa:") for q in ds["2wiki"].questions)
    assert column_names(ds["hotpotqa"]) == ["hotpotqa", "hotpotqa/bridge", "hotpotqa/comparison"]
    assert set(column_names(ds["2wiki"])[1:]) == {"2wiki/compositional", "2wiki/comparison",
                                                  "2wiki/bridge_comparison", "2wiki/inference"}
    assert column_names(ds["nq"]) == ["nq"]  # no `by`: one column
    q = ds["nq"].questions[0]
    assert q.answers == ["Cyrus"] and "supporting_pids" in q.as_input() and "answer" not in q.as_input()


def test_where_lists_prefixes_and_bad_operators():
    mh = REALQA / "multihop/dev.jsonl"
    both = load_questions(mh, {"type": ["bridge", "compositional"]})
    assert {q.row["type"] for q in both} == {"bridge", "compositional"} and len(both) == 129 + 111
    assert len(load_questions(mh, {"id": {"prefix": "2wikimultihopqa:"}, "type": "comparison"})) > 0
    with pytest.raises(UserError, match=r"condition on 'id' must be a value, a list of values or \{prefix: TEXT\}"):
        load_questions(mh, {"id": {"startswith": "hotpotqa:"}})


def test_harness_scores_each_type_from_the_same_answers(tmp_path):
    from kinject.eval.config import EvalConfig
    from kinject.eval.harness import run_eval

    q, _ = small_set(tmp_path)
    cfg = EvalConfig(device="cpu", metrics=["em"], plots=False,
                     datasets=[{"name": "toy", "path": str(q), "by": "type"}],
                     methods=[{"name": "lookup_k2", "options": {"answers": {"What is the capital of Norland?": "Velmora",
                                                                            "Which company developed Vailhisnal?": "Acme"}}}])
    rows = run_eval(cfg, tmp_path / "out", quiet=True)
    em = {r.dataset: (r.value, r.n) for r in rows if r.metric == "em"}
    assert em == {"toy": (1 / 3, 3), "toy/bridge": (0.5, 2), "toy/1-hop": (0.0, 1)}
    retr = {r.dataset: r.value for r in rows if r.metric == "avg_retrievals"}
    assert retr == {"toy": 1.0, "toy/bridge": 1.0, "toy/1-hop": 1.0}
    report = (tmp_path / "out/report.md").read_text()
    assert "| method | toy (em) | toy/bridge (em) | toy/1-hop (em) |" in report


# --- loader and bad input ----------------------------------------------------------------------
def test_shipped_sets_load_and_cross_check():
    from kinject.realqa.data import load_qa_set

    nq = load_qa_set(REALQA / "nq_oracle/dev.jsonl", REALQA / "nq_oracle/passages.tsv")
    assert len(nq.questions) == 1326 and len(nq.passages) == 2588
    mh = load_qa_set(REALQA / "multihop/dev.jsonl", REALQA / "multihop/passages.tsv")
    assert len(mh.questions) == 536 and len(mh.passages) == 8159
    assert {len(q.gold) for q in mh.questions} == {2, 4}


def corrupt(tmp_path: Path, case: str) -> tuple[Path, Path, str]:
    q, p = small_set(tmp_path)
    if case == "absent_pid":
        rows = [json.loads(x) for x in q.read_text().splitlines()]
        rows[2]["supporting_pids"] = ["1", "99"]
        write_jsonl(q, rows)
        return q, p, r"q.jsonl:3: question 'a:3' names supporting_pids absent from .*p.tsv: '99'"
    if case == "short_row":
        with p.open("a", encoding="utf-8") as f:
            f.write("5\tonly an id and a text\n")
        return q, p, r"p.tsv:6: expected 3 tab-separated columns, got 2"
    if case == "empty_text":
        with p.open("a", encoding="utf-8") as f:
            f.write("5\t\tTitle\n")
        return q, p, r"p.tsv:6: empty id or text"
    if case == "duplicate_question":
        rows = [json.loads(x) for x in q.read_text().splitlines()]
        rows[2]["id"] = "a:1"
        write_jsonl(q, rows)
        return q, p, r"q.jsonl:3: duplicate question id 'a:1' \(first on line 1\)"
    if case == "duplicate_passage":
        with p.open("a", encoding="utf-8") as f:
            f.write("2\tAnother text for an id already used.\tNorland\n")
        return q, p, r"p.tsv:6: duplicate passage id '2' \(first on line 3\)"
    if case == "missing_field":
        rows = [json.loads(x) for x in q.read_text().splitlines()]
        del rows[1]["type"]
        write_jsonl(q, rows)
        return q, p, r"q.jsonl:2: missing field\(s\) 'type'"
    if case == "bad_answer":
        rows = [json.loads(x) for x in q.read_text().splitlines()]
        rows[0]["answer"] = []
        write_jsonl(q, rows)
        return q, p, r"q.jsonl:1: 'answer' must be a non-empty list"
    raise AssertionError(case)


@pytest.mark.parametrize("args, needle", [
    (["--dense-opt", "devise=cuda"], "error: unknown option(s) devise for backend 'dense'; valid: batch_size, device"),
    (["--index-backend", "tantivyy"], "error: unknown retrieval backend 'tantivyy'"),
    (["--backends", "tantivy,bm25"], "error: --backends: unknown ['bm25']"),
])
def test_misspelt_options_are_one_error_line(capsys, tmp_path, args, needle):
    q, p = small_set(tmp_path)
    code, _, err = run_cli(capsys, "realqa", "eval", "--questions", q, "--passages", p, "--out", tmp_path / "o", *args)
    assert code == 2 and err.startswith(needle) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("case", ["absent_pid", "short_row", "empty_text", "duplicate_question",
                                  "duplicate_passage", "missing_field", "bad_answer"])
def test_bad_input_is_one_error_line_and_writes_nothing(capsys, tmp_path, case):
    import re

    q, p, pattern = corrupt(tmp_path, case)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "realqa", "eval", "--questions", q, "--passages", p, "--out", out,
                                "--backends", "tantivy")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists()


def test_good_input_measures_retrieval(capsys, tmp_path):
    q, p = small_set(tmp_path)
    code, stdout, err = run_cli(capsys, "realqa", "eval", "--questions", q, "--passages", p, "--out",
                                tmp_path / "out", "--backends", "tantivy,bm25s", "--threads", 1)
    assert code == 0, err
    rep = json.loads((tmp_path / "out/retrieval/bench.json").read_text())
    assert rep["corpus"] == "q" and [r["backend"] for r in rep["results"]] == ["tantivy", "bm25s"]
    t = rep["results"][0]
    assert t["recall_any@1"] == 1.0 and t["recall_all@10"] == 1.0  # four passages: everything is found
    assert set(t["by_type"]) == {"bridge", "1-hop"} and t["by_type"]["bridge"]["n"] == 2
    assert "| tantivy |" in stdout and "bridge (n=2)" in stdout


def test_index_option_is_filled_only_where_a_method_takes_one(tmp_path):
    from kinject.eval.config import MethodEntry
    from kinject.realqa.cli import dataset_name, fill_index

    methods = [MethodEntry(name="rag_k3", options={"model": "m"}), MethodEntry(name="base", options={"model": "m"}),
               MethodEntry(name="rag_k1", options={"model": "m", "index": "mine"}),
               MethodEntry(name="oracle", options={"model": "m"})]
    assert fill_index(methods, tmp_path / "index", tmp_path / "p.tsv") == ["rag_k3", "oracle"]
    assert methods[0].options["index"] == str(tmp_path / "index") and methods[2].options["index"] == "mine"
    assert "index" not in methods[1].options and "passages" not in methods[1].options
    assert methods[3].options == {"model": "m", "passages": str(tmp_path / "p.tsv")}
    assert dataset_name(Path("data/realqa/multihop/dev.jsonl")) == "multihop"
    assert dataset_name(Path("sets/bioasq.jsonl")) == "bioasq"


# --- metrics and the corpus bench ---------------------------------------------------------------
def test_ranking_metrics_by_hand():
    from kinject.retrieval.bench import ranking_metrics

    runs = [["a", "x", "b"], ["x", "y", "c"], ["z"]]
    golds = [["a", "b"], ["c"], ["q"]]
    m = ranking_metrics(runs, golds, ks=(1, 3))
    assert m["recall_any@1"] == round(1 / 3, 4) and m["recall_all@1"] == 0.0
    assert m["recall_any@3"] == round(2 / 3, 4) and m["recall_all@3"] == round(2 / 3, 4)
    assert m["mrr@3"] == round((1 + 1 / 3 + 0) / 3, 4)


def test_corpus_bench_smoke_every_backend(capsys, tmp_path):
    """A 60-passage slice of the NQ set through `kinject bench retrieval --questions --passages`."""
    rows = [json.loads(x) for x in (REALQA / "nq_oracle/dev.jsonl").read_text().splitlines()[:20]]
    gold = {g for r in rows for g in r["supporting_pids"]}
    with (REALQA / "nq_oracle/passages.tsv").open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader)
        passages = [r for r in reader if r[0] in gold or int(r[0]) % 40 == 0][:60]
    q = write_jsonl(tmp_path / "nq.jsonl", rows)
    p = write_tsv(tmp_path / "p.tsv", passages)
    out = tmp_path / "bench"
    code, stdout, err = run_cli(capsys, "bench", "retrieval", "--questions", q, "--passages", p, "--out", out,
                                "--threads", 1, "--dense-opt", "batch_size=16")
    assert code == 0, err
    rep = json.loads((out / "bench.json").read_text())
    assert rep["settings"]["dense"] == {"batch_size": 16}
    by = {r["backend"]: r for r in rep["results"]}
    assert list(by) == ["tantivy", "dense", "hybrid", "bm25s"]
    for r in by.values():
        assert r["n_queries"] == 20 and r["n_docs"] == len(passages) and r["batched_equals_single"]
        assert 0.8 <= r["recall_any@10"] <= 1.0 and r["recall_any@1"] <= r["recall_any@5"] <= r["recall_any@10"]
        assert r["single_qps"] > 0
    assert (out / "bench.md").read_text().count("| hybrid |") == 1
    assert not (out / "work").exists()  # scratch indexes are removed
    runs = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert [r["id"] for r in runs] == [r["id"] for r in rows] and set(runs[0]) == {"id", "gold", "tantivy", "dense"}
    from kinject.retrieval.bench import ranking_metrics

    for b in ("tantivy", "dense"):  # the saved lists are the measured rankings, deeper
        again = ranking_metrics([r[b] for r in runs], [r["gold"] for r in runs])
        assert again["recall_any@10"] == by[b]["recall_any@10"] and again["mrr@10"] == by[b]["mrr@10"]


def test_default_bm25_beats_the_bm25s_reference_on_nq(tmp_path):
    """The tantivy default (body + title) against plain BM25 over title + text (docs/realqa.md)."""
    from kinject.realqa.data import load_qa_set
    from kinject.retrieval.bench import run_corpus_bench

    qa = load_qa_set(REALQA / "nq_oracle/dev.jsonl", REALQA / "nq_oracle/passages.tsv")
    rep = run_corpus_bench(tmp_path, qa.passages, [q.question for q in qa.questions], [q.gold for q in qa.questions],
                           [q.type for q in qa.questions], ["tantivy", "bm25s"], threads=1)
    t, ref = rep["results"]
    assert t["recall_any@5"] >= ref["recall_any@5"] and t["recall_any@1"] > ref["recall_any@1"]


def test_indexes_built_before_the_body_field_still_open(tmp_path):
    """Metadata without `body_field` means the title + text layout: reopened and searched as built."""
    from kinject.io import write_json_atomic
    from kinject.retrieval.base import META_FILE, Doc, open_index, read_meta
    from kinject.retrieval.tantivy_backend import TantivyRetriever

    r = TantivyRetriever.create(tmp_path, body_field=False)
    r.add([Doc("1", "Velmora is the capital of Norland.", "Velmora"), Doc("2", "A river in the north.", "Esk")])
    r.close()
    write_json_atomic(tmp_path / META_FILE, {"backend": "tantivy", "format": 1, "options": {"heap_mb": 256,
                                                                                            "writer_threads": 0}})
    with open_index(tmp_path) as old:
        assert old.fields == ("title", "text") and [h.id for h in old.search("capital of Norland", 2)] == ["1"]
    assert "body_field" not in read_meta(tmp_path)["options"]
    new = TantivyRetriever.create(tmp_path / "new")
    assert new.options()["body_field"] is True and new.fields == ("body", "title")


def test_realqa_eval_with_a_config_runs_its_methods_per_type(capsys, tmp_path):
    q, p = small_set(tmp_path)
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("kind: eval\ndevice: cpu\nmetrics: [em]\nplots: false\ndatasets: []\nmethods:\n"
                   "  - {name: lookup_k1, options: {answers: {'Which river flows through Velmora?': Esk}}}\n")
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "realqa", "eval", "--questions", q, "--passages", p, "--out", out,
                                "--backends", "tantivy", "--config", cfg, "--name", "toy")
    assert code == 0, err
    report = (out / "eval/report.md").read_text()
    assert "| lookup_k1 | 0.333 | 0.500 | 0.000 |" in report and "toy/bridge (em)" in report
    assert (out / "index/kinject-index.json").is_file() and (out / "retrieval/bench.json").is_file()
    # a bad method in the config: one error line before anything is indexed or measured
    cfg.write_text("kind: eval\nmetrics: [em]\ndatasets: []\nmethods:\n  - {name: no_such_method}\n")
    code, _, err = run_cli(capsys, "realqa", "eval", "--questions", q, "--passages", p, "--out", tmp_path / "o2",
                           "--config", cfg)
    assert code == 2 and err.strip().startswith("error: ") and "unknown method 'no_such_method'" in err
    assert not (tmp_path / "o2").exists()


def test_bench_fusion_refuses_saved_rankings(capsys, tmp_path):
    """g is 5th in both lists: a large RRF constant ranks it first (in both), a small one lets the
    lists' own first passages win."""
    runs = write_jsonl(tmp_path / "runs.jsonl", [
        {"id": "q1", "gold": ["g"], "tantivy": ["a", "x1", "x2", "x3", "g"], "dense": ["b", "y1", "y2", "y3", "g"]}])
    code, stdout, err = run_cli(capsys, "bench", "fusion", "--runs", runs, "--rrf-k", "1,60")
    assert code == 0, err
    rows = {ln.split("|")[1].strip(): ln.split("|")[2].strip() for ln in stdout.splitlines()[2:]}
    assert rows == {"tantivy": "0.000", "dense": "0.000", "hybrid rrf_k=1": "0.000", "hybrid rrf_k=60": "1.000"}
    code, _, err = run_cli(capsys, "bench", "fusion", "--runs", runs, "--rrf-k", "0")
    assert code == 2 and "--rrf-k must be positive" in err
