"""tantivy vs the bm25s reference on a few thousand synthetic passages, same tokenization
(tantivy's en_stem chain: simple tokenizer, lowercase, English Snowball stemmer, no stopwords,
applied by `english_tokens` on both sides)."""

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
    return float(np.mean([len(r & g) / max(1, len(r)) for r, g in zip(ref_top, got_top)]))


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


def test_best_fields_parity_with_titles(tmp_path, corpus):
    """Title + text as GRIP's ES multi_match best_fields: max over fields + 0.5 x the other."""
    docs, queries = corpus
    r = TantivyRetriever.create(tmp_path)
    r.add(docs)
    by_field = [_bm25s([d.title for d in docs]), _bm25s([d.text for d in docs])]
    ref_top = []
    for q in queries:
        toks = english_tokens(q)
        s = np.stack([m.get_scores(toks) for m in by_field])
        fused = s.max(0) + TIE_BREAKER * (s.sum(0) - s.max(0))
        top = np.argsort(-fused, kind="stable")[:10]
        ref_top.append({docs[j].id for j in top if fused[j] > 0})
    got = [{h.id for h in hs} for hs in r.batch_search(queries, 10)]
    overlap = _overlap(ref_top, got)
    print(f"best_fields top-10 overlap: {overlap:.4f}")
    assert overlap >= 0.9
