"""tantivy vs the bm25s reference on a few thousand synthetic passages, same tokenization
(simple tokenizer, lowercase, Lucene English stop words, English Snowball stemmer: the
index's analyzer, applied by `english_tokens` on both sides)."""

import bm25s
import numpy as np
import pytest

from kinject.retrieval.base import Doc
from kinject.retrieval.synthetic import SyntheticCorpus
from kinject.retrieval.tantivy_backend import TIE_BREAKER, TantivyRetriever, english_tokens

N_DOCS, N_QUERIES = 3000, 300


@pytest.fixture(scope="module")
def corpus():
    c = SyntheticCorpus(N_DOCS, words=100, seed=1)
    return list(c.docs()), [q for q, _ in c.queries(N_QUERIES)]


def _bm25s(texts):
    m = bm25s.BM25(k1=1.2, b=0.75, method="lucene")  # tantivy's k1/b; lucene idf
    m.index([english_tokens(t) for t in texts], show_progress=False)
    return m


def _overlap(ref_top: list[set], got_top: list[set]) -> float:
    return float(np.mean([len(r & g) / len(r) if r else float(not g) for r, g in zip(ref_top, got_top)]))


def test_plain_bm25_parity(tmp_path, corpus):
    docs, queries = corpus
    untitled = [Doc(d.id, d.text) for d in docs]
    r = TantivyRetriever.create(tmp_path)
    r.add(untitled)
    ref = _bm25s([d.text for d in untitled])
    res = ref.retrieve([english_tokens(q) for q in queries], k=10, show_progress=False)
    ref_top = [{untitled[j].id for j, s in zip(row, sc) if s > 0} for row, sc in zip(res.documents, res.scores)]
    got = r.batch_search(queries, 10)
    overlap = _overlap(ref_top, [{h.id for h in hs} for hs in got])
    print(f"plain BM25 top-10 overlap: {overlap:.4f}")
    assert overlap >= 0.95
    # same ranking function: tantivy keeps the constant (k1 + 1) factor that Lucene >= 8 dropped,
    # and stores lengths in one byte (small deviations)
    ratios = [hs[0].score / float(sc[0]) for hs, row, sc in zip(got, res.documents, res.scores)
              if hs and sc[0] > 0 and hs[0].id == untitled[row[0]].id]
    assert len(ratios) > 0.9 * len(queries)
    assert np.median(ratios) == pytest.approx(2.2, rel=0.05)


@pytest.mark.parametrize("body_field", [True, False])
def test_best_fields_parity_with_titles(tmp_path, corpus, body_field):
    """Disjunction-max over fields with tie 0.5 (max over fields + 0.5 x the other): the default
    over body (title + text as one field) and title; indexes built before `body` existed use
    title and text, GRIP's ES multi_match best_fields."""
    docs, queries = corpus
    r = TantivyRetriever.create(tmp_path, body_field=body_field)
    r.add(docs)
    second = [f"{d.title} {d.text}" for d in docs] if body_field else [d.text for d in docs]
    by_field = [_bm25s([d.title for d in docs]), _bm25s(second)]
    ref_top = []
    for q in queries:
        toks = english_tokens(q)
        if not toks:
            ref_top.append(set())
            continue
        s = np.stack([m.get_scores(toks) for m in by_field])
        fused = s.max(0) + TIE_BREAKER * (s.sum(0) - s.max(0))
        top = np.argsort(-fused, kind="stable")[:10]
        ref_top.append({docs[j].id for j in top if fused[j] > 0})
    got = [{h.id for h in hs} for hs in r.batch_search(queries, 10)]
    overlap = _overlap(ref_top, got)
    print(f"best_fields top-10 overlap: {overlap:.4f}")
    assert overlap >= 0.9


def test_synthetic_corpus_is_deterministic():
    a, b = SyntheticCorpus(300, seed=3), SyntheticCorpus(300, seed=3)
    assert list(a.docs()) == list(b.docs()) and a.queries(20) == b.queries(20)
    docs = list(a.docs())
    assert len(docs) == 300 and all(len(d.text.split()) == 100 for d in docs)
    assert list(SyntheticCorpus(300, seed=4).docs()) != docs
    for q, target in a.queries(20):
        assert set(q.split()) <= set(docs[int(target[1:])].text.split())


def test_bench_writes_json(tmp_path):
    import json

    from kinject.retrieval.bench import run_bench

    report = run_bench(tmp_path, [1500], ["tantivy", "bm25s"], n_queries=50)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["results"] == report["results"] and not (tmp_path / "work").exists()
    for r in saved["results"]:
        assert r["n_docs"] == 1500 and r["batched_equals_single"] and r["target_at_10"] >= 0.9
        assert r["build_docs_per_s"] > 0 and r["single_qps"] > 0 and r["batched_qps"] > 0 and r["index_bytes"] > 0
    assert saved["tantivy_vs_bm25s_qps"][0]["corpus_size"] == 1500
