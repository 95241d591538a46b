"""`kinject index build|add|delete`, `kinject search` in their documented forms, and their
one-line user errors (exit 2)."""

import json
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "kinject.cli"]


def run(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def one_error(res, pattern):
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    assert pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "psgs.tsv").write_text(
        "id\ttext\ttitle\n"
        "1\tAaron is a prophet and the brother of Moses.\tAaron\n"
        "2\tThe Nile is a river flowing north through Egypt.\tNile\n"
        "3\tMount Sinai is a mountain in Egypt.\tSinai\n", encoding="utf-8")
    (tmp / "more.jsonl").write_text(json.dumps({"id": "4", "title": "Moses", "text": "Moses led the Israelites."}) + "\n")
    (tmp / "bad.tsv").write_text("id\ttext\ttitle\n1\tok\tT\n2\tbroken line\n", encoding="utf-8")
    (tmp / "queries.jsonl").write_text(json.dumps({"question": "Who was the brother of Moses?"}) + "\n"
                                       + json.dumps({"question": "Which river flows through Egypt?"}) + "\n")
    (tmp / "ids.txt").write_text("2\n")
    return tmp


def test_build_add_search_delete(files):
    idx = files / "index"
    res = run("index", "build", "--backend", "tantivy", "--input", files / "psgs.tsv", "--out", idx)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["count"] == 3
    res = run("index", "add", "--index", idx, "--input", files / "more.jsonl")
    assert res.returncode == 0 and json.loads(res.stdout)["count"] == 4

    res = run("search", "--index", idx, "-k", "2", "brother of Moses")
    hits = json.loads(res.stdout)
    assert res.returncode == 0 and hits[0]["id"] == "1" and set(hits[0]) == {"id", "title", "text", "score"}

    out = files / "hits.jsonl"
    res = run("search", "--index", idx, "-k", "10", "--queries", files / "queries.jsonl", "--out", out)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["question"] for r in rows] == ["Who was the brother of Moses?", "Which river flows through Egypt?"]
    assert rows[1]["hits"][0]["id"] == "2"

    res = run("index", "delete", "--index", idx, "--ids", files / "ids.txt")
    assert res.returncode == 0 and json.loads(res.stdout)["deleted"] == 1
    hits = json.loads(run("search", "--index", idx, "-k", "10", "river Nile Egypt").stdout)
    assert "2" not in {h["id"] for h in hits}


def test_skip_bad(files):
    res = run("index", "build", "--input", files / "bad.tsv", "--out", files / "bad-idx")
    one_error(res, "bad.tsv:3: expected 3 tab-separated columns")
    assert not (files / "bad-idx").exists()
    res = run("index", "build", "--input", files / "bad.tsv", "--out", files / "bad-idx", "--skip-bad", "--quiet")
    rep = json.loads(res.stdout)
    assert res.returncode == 0 and rep["skipped"] == 1 and rep["problems"][0].endswith(
        "bad.tsv:3: expected 3 tab-separated columns, got 2")


@pytest.mark.parametrize("args, pattern", [
    (("search", "--index", "{idx}", "-k", "3", "  "), "empty query"),
    (("search", "--index", "{idx}", "-k", "0", "Moses"), "k must be a positive integer"),
    (("search", "--index", "{tmp}/missing", "-k", "3", "Moses"), "index directory not found"),
    (("search", "--index", "{idx}", "--backend", "dense", "Moses"), "built by backend 'tantivy'"),
    (("search", "--index", "{idx}"), "give either a query"),
    (("index", "add", "--index", "{idx}", "--input", "{tmp}/bad.tsv"), "bad.tsv:3"),
    (("index", "build", "--opt", "heap=3", "--input", "{tmp}/psgs.tsv", "--out", "{tmp}/x"), "unknown option(s) heap"),
    (("index", "build", "--backend", "nope", "--input", "{tmp}/psgs.tsv", "--out", "{tmp}/x"), "unknown retrieval backend"),
])
def test_user_errors(files, args, pattern):
    idx = files / "err-index"
    if not idx.exists():
        assert run("index", "build", "--input", files / "psgs.tsv", "--out", idx, "--quiet").returncode == 0
    one_error(run(*[a.format(idx=idx, tmp=files) for a in args]), pattern)
