"""Ingestion, chunking, the tantivy backend (add/delete/upsert/restart), index directories."""

import json
import subprocess
import sys

import pytest

from kinject.errors import UserError
from kinject.retrieval.base import META_FILE, Doc, Hit, check_query, open_index, read_meta
from kinject.retrieval.hybrid import rrf
from kinject.retrieval.index import add_to_index, build_index, delete_from_index
from kinject.retrieval.ingest import IngestStats, chunk_doc, chunk_docs, read_ids, read_passages

PASSAGES = [
    {"id": "cat1", "title": "Zorvanite", "text": "Zorvanite is a platinum catalyst that melts at 1450 kelvin."},
    {"id": "cat2", "title": "Quellium oxide", "text": "Quellium oxide catalysts reach 93 percent selectivity in ethylene runs."},
    {"id": "cat3", "title": "Brastine", "text": "Brastine was discovered in Norland and is used for hydrogenation."},
    {"id": "cat4", "title": "Veltrazine", "text": "Veltrazine adjuvants stimulate the immune response of mice."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def jsonl(tmp_path):
    return write_jsonl(tmp_path / "p.jsonl", PASSAGES)


@pytest.fixture
def index(tmp_path, jsonl):
    build_index(jsonl, tmp_path / "idx", progress=False)
    return tmp_path / "idx"


# --- ingestion ----------------------------------------------------------------------------------
def test_dpr_tsv_with_quotes_and_header(tmp_path):
    p = tmp_path / "psgs.tsv"
    p.write_text('id\ttext\ttitle\n1\t"He said ""hi"" to\tthem"\tGreeting\n2\tplain text\tPlain\n', encoding="utf-8")
    docs = list(read_passages(p))
    assert docs == [Doc("1", 'He said "hi" to\tthem', "Greeting"), Doc("2", "plain text", "Plain")]
    assert docs[0].source == "1"


def test_malformed_lines_name_file_and_line(tmp_path):
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("id\ttext\ttitle\n1\tok\tT\n2\tmissing title column\n3\tok too\tT\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.tsv:3: expected 3 tab-separated columns.*--skip-bad"):
        list(read_passages(tsv))
    stats = IngestStats()
    assert [d.id for d in read_passages(tsv, skip_bad=True, stats=stats)] == ["1", "3"]
    assert (stats.read, stats.skipped) == (2, 1)

    js = tmp_path / "bad.jsonl"
    js.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": \n{"text": "no id"}\n{"id": "c", "text": "y"}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: malformed JSON"):
        list(read_passages(js))
    stats = IngestStats()
    assert [d.id for d in read_passages(js, skip_bad=True, stats=stats)] == ["a", "c"]
    assert stats.skipped == 2 and "bad.jsonl:3: missing field 'id'" in stats.problems[1]


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "p.csv").write_text("x")
    with pytest.raises(UserError, match="unknown passage file format"):
        list(read_passages(tmp_path / "p.csv"))
    with pytest.raises(UserError, match="not found"):
        list(read_passages(tmp_path / "nope.jsonl"))


def test_chunking_windows_overlap_and_traceable_ids():
    doc = Doc("d7", " ".join(f"w{i}" for i in range(10)), "T")
    chunks = chunk_doc(doc, words=4, overlap=1)
    assert [c.text for c in chunks] == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"]
    assert [c.id for c in chunks] == ["d7#0", "d7#1", "d7#2"]
    assert {c.source for c in chunks} == {"d7"} and {c.title for c in chunks} == {"T"}
    assert [c.text for c in chunk_doc(Doc("s", "a b"), 4, 2)] == ["a b"]
    assert list(chunk_docs([doc], None)) == [doc]
    with pytest.raises(UserError, match="chunk-overlap"):
        chunk_doc(doc, 4, 4)


def test_read_ids_text_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("x1\n\n x2 \n")
    (tmp_path / "b.jsonl").write_text('{"id": "y1"}\n{"id": 5}\n')
    assert read_ids(tmp_path / "a.txt") == ["x1", "x2"]
    assert read_ids(tmp_path / "b.jsonl") == ["y1", "5"]


# --- tantivy: search, add, delete, restart ------------------------------------------------------
def test_search_stems_and_uses_titles(index):
    with open_index(index) as r:
        assert r.count() == 4
        hits = r.search("Which catalyst melted at 1450 kelvin?", 3)
        assert hits[0].id == "cat1" and hits[0].title == "Zorvanite" and "1450" in hits[0].text
        assert hits[0].score > hits[-1].score
        assert r.search("zorvanite", 2)[0].id == "cat1"  # title match
        assert r.search("hydrogenations", 1)[0].id == "cat3"  # stemmed
        assert [h.id for h in r.search('AND "Norland" OR (NOT +title:', 3)] == ["cat3"]  # no query syntax
        assert r.search("!!!", 3) == []


def test_batch_search_equals_single(index):
    qs = ["platinum catalyst", "immune response", "Norland", "ethylene selectivity"] * 3
    with open_index(index) as r:
        assert r.batch_search(qs, 2, threads=3) == [r.search(q, 2) for q in qs]


def test_add_delete_upsert_and_restart(tmp_path, index):
    new = write_jsonl(tmp_path / "new.jsonl", [
        {"id": "cat5", "title": "Moravite", "text": "Moravite is a cobalt catalyst for ammonia synthesis."},
        {"id": "cat2", "title": "Quellium oxide", "text": "Quellium oxide now reaches 97 percent selectivity."},
    ])
    rep = add_to_index(index, new, progress=False)
    assert (rep.added, rep.count) == (2, 5)
    with open_index(index) as r:
        assert r.search("cobalt ammonia", 1)[0].id == "cat5"  # found without a rebuild
        q = r.search("quellium selectivity", 10)
        assert [h.id for h in q].count("cat2") == 1 and "97 percent" in q[0].text  # upsert replaced it
    (tmp_path / "del.txt").write_text("cat1\nnot-there\n")
    rep = delete_from_index(index, tmp_path / "del.txt")
    assert (rep.deleted, rep.count) == (1, 4)
    with open_index(index) as r:
        everything = r.search("zorvanite platinum catalyst melts kelvin 1450 quellium brastine immune", 100)
        assert "cat1" not in {h.id for h in everything} and len(everything) == 4

    # a new process sees the same index (persistence across a restart)
    code = (
        "import json,sys; from kinject.retrieval.base import open_index;"
        f"r=open_index({str(index)!r}); print(json.dumps([r.count(), r.search('cobalt catalyst', 1)[0].id,"
        " [h.id for h in r.search('zorvanite', 10)]]))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [4, "cat5", []]


def test_delete_a_document_removes_all_its_chunks(tmp_path):
    long_doc = {"id": "big", "title": "Manual", "text": " ".join(f"step{i} torque" for i in range(30))}
    src = write_jsonl(tmp_path / "d.jsonl", [long_doc, PASSAGES[0]])
    rep = build_index(src, tmp_path / "idx", chunk_words=20, chunk_overlap=5, progress=False)
    assert rep.count == 5 and read_meta(tmp_path / "idx")["chunking"] == {"words": 20, "overlap": 5}
    with open_index(tmp_path / "idx") as r:
        ids = {h.id for h in r.search("torque", 10)}
        assert ids == {"big#0", "big#1", "big#2", "big#3"}
    # added documents are chunked like the build
    more = write_jsonl(tmp_path / "m.jsonl", [{"id": "big2", "text": " ".join(["gear"] * 30)}])
    add_to_index(tmp_path / "idx", more, progress=False)
    with open_index(tmp_path / "idx") as r:
        assert {h.id for h in r.search("gear", 10)} == {"big2#0", "big2#1"}
    (tmp_path / "ids").write_text("big\n")
    assert delete_from_index(tmp_path / "idx", tmp_path / "ids").deleted == 4


# --- index directories and bad input ------------------------------------------------------------
def test_metadata_records_backend_and_mismatch_is_an_error(tmp_path, index, jsonl):
    assert read_meta(index)["backend"] == "tantivy"
    with pytest.raises(UserError, match="built by backend 'tantivy', not 'dense'"):
        open_index(index, backend="dense")
    with pytest.raises(UserError, match="built by backend 'tantivy'"):
        build_index(jsonl, index, backend="hybrid", progress=False)
    with pytest.raises(UserError, match="index directory not found"):
        open_index(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(UserError, match="not a complete kinject index"):
        open_index(tmp_path / "half")
    with pytest.raises(UserError, match="unknown retrieval backend 'solr'"):
        build_index(jsonl, tmp_path / "x", backend="solr", progress=False)


def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path, jsonl, monkeypatch):
    import kinject.retrieval.index as index_mod

    def exploding(*a, **k):
        yield Doc("a", "first passage")
        raise KeyboardInterrupt

    monkeypatch.setattr(index_mod, "read_passages", exploding)
    with pytest.raises(KeyboardInterrupt):
        build_index(jsonl, tmp_path / "idx", progress=False)
    assert list(tmp_path.iterdir()) == [jsonl]  # no index dir, no temp dir left
    # an existing index survives an interrupted rebuild untouched
    monkeypatch.undo()
    build_index(jsonl, tmp_path / "idx", progress=False)
    monkeypatch.setattr(index_mod, "read_passages", exploding)
    with pytest.raises(KeyboardInterrupt):
        build_index(jsonl, tmp_path / "idx", progress=False)
    with open_index(tmp_path / "idx") as r:
        assert r.count() == 4


def test_empty_query_and_bad_k(index):
    with open_index(index) as r:
        for bad in ("", "   "):
            with pytest.raises(UserError, match="empty query"):
                r.search(bad, 3)
        for k in (0, -1):
            with pytest.raises(UserError, match="k must be a positive integer"):
                r.search("catalyst", k)
        with pytest.raises(UserError, match="empty query at position 1"):
            r.batch_search(["catalyst", ""], 3)
    with pytest.raises(UserError):
        check_query("ok", 0)


def test_build_rejects_empty_input(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no passages"):
        build_index(tmp_path / "e.jsonl", tmp_path / "idx", progress=False)
    assert not (tmp_path / "idx").exists()


# --- hybrid -------------------------------------------------------------------------------------
def test_rrf_fuses_ranks():
    a = [Hit("x", "", "", 9.0), Hit("y", "", "", 5.0), Hit("z", "", "", 1.0)]
    b = [Hit("y", "", "", 0.9), Hit("w", "", "", 0.8)]
    fused = rrf([a, b], k=3, rrf_k=60)
    assert [h.id for h in fused] == ["y", "x", "w"]
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61)


def test_hybrid_of_two_tantivy_indexes(tmp_path, jsonl):
    build_index(jsonl, tmp_path / "h", backend="hybrid", options={"first": "tantivy", "second": "tantivy"},
                progress=False)
    meta = read_meta(tmp_path / "h")
    assert meta["backend"] == "hybrid" and read_meta(tmp_path / "h" / "second")["backend"] == "tantivy"
    with open_index(tmp_path / "h") as r:
        assert r.count() == 4 and r.search("platinum catalyst", 1)[0].id == "cat1"
    (tmp_path / "ids").write_text("cat1\n")
    delete_from_index(tmp_path / "h", tmp_path / "ids")
    with open_index(tmp_path / "h") as r:
        assert "cat1" not in {h.id for h in r.search("platinum catalyst", 10)}
        assert all(p.count() == 3 for p in r.parts)
    assert META_FILE in {p.name for p in (tmp_path / "h").iterdir()}
