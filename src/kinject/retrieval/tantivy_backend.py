"""Embedded BM25 on disk with tantivy (the default backend).

Schema: `id` and `source` (raw terms, for upsert/delete), `title` and `text` analyzed with
tantivy's `en_stem` (simple tokenizer, long-token removal, lowercase, English Snowball stemmer).
Queries are analyzed with the same chain in Python and scored like GRIP's Elasticsearch
`multi_match` best_fields with tie_breaker 0.5: a disjunction-max over one BM25 query per field.
Building the query from analyzed terms (instead of tantivy's query parser) means no query syntax
can break a search. Tantivy releases the GIL while searching, so `batch_search` uses threads.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from pathlib import Path

import tantivy

from kinject.retrieval.base import BaseRetriever, Doc, Hit, progress_iter, register_backend

FIELDS = ("title", "text")
TIE_BREAKER = 0.5
DATA_DIR = "tantivy"


@functools.cache
def english_analyzer() -> tantivy.TextAnalyzer:
    """The `en_stem` chain, usable outside an index (queries, the bm25s parity reference)."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(40))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def english_tokens(text: str) -> list[str]:
    return english_analyzer().analyze(text)


def _schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("id", stored=True, tokenizer_name="raw", index_option="basic")
    sb.add_text_field("source", stored=True, tokenizer_name="raw", index_option="basic")
    # term frequencies are all BM25 needs; no positions keeps the index smaller
    for f in FIELDS:
        sb.add_text_field(f, stored=True, tokenizer_name="en_stem", index_option="freq")
    return sb.build()


@register_backend("tantivy")
class TantivyRetriever(BaseRetriever):
    def __init__(self, path: Path, heap_mb: int = 256, writer_threads: int = 0):
        self.path = Path(path)
        self.heap_mb = heap_mb
        self.writer_threads = writer_threads
        self.schema = _schema()
        self.index = tantivy.Index(self.schema, path=str(self.path / DATA_DIR), reuse=True)
        self._refresh()

    @classmethod
    def create(cls, path: Path, heap_mb: int = 256, writer_threads: int = 0) -> TantivyRetriever:
        (Path(path) / DATA_DIR).mkdir(parents=True, exist_ok=True)
        return cls(path, heap_mb=heap_mb, writer_threads=writer_threads)

    @classmethod
    def open(cls, path: Path, options: dict) -> TantivyRetriever:
        return cls(path, **options)

    def options(self) -> dict:
        return {"heap_mb": self.heap_mb, "writer_threads": self.writer_threads}

    def _refresh(self) -> None:
        self.index.reload()
        self.searcher = self.index.searcher()

    def _writer(self) -> tantivy.IndexWriter:
        threads = self.writer_threads or min(4, os.cpu_count() or 1)
        # tantivy needs >= 15 MB of heap per indexing thread
        heap = max(self.heap_mb, 16 * threads) * 1_000_000
        return self.index.writer(heap_size=heap, num_threads=threads)

    def add(self, docs: Iterable[Doc], progress: bool = False) -> int:
        writer = self._writer()
        upsert = self.count() > 0
        n = 0
        try:
            for d in progress_iter(docs, "indexing (tantivy)", progress):
                if upsert:
                    writer.delete_documents_by_term("id", d.id)
                writer.add_document(tantivy.Document(id=d.id, source=d.source, title=d.title, text=d.text))
                n += 1
            writer.commit()
            writer.wait_merging_threads()
        except BaseException:
            writer.rollback()
            raise
        self._refresh()
        return n

    def delete(self, ids: Iterable[str]) -> int:
        before = self.count()
        writer = self._writer()
        for i in ids:
            writer.delete_documents_by_term("id", i)
            writer.delete_documents_by_term("source", i)
        writer.commit()
        writer.wait_merging_threads()
        self._refresh()
        return before - self.count()

    def count(self) -> int:
        return self.searcher.num_docs

    def _query(self, text: str) -> tantivy.Query | None:
        terms = english_tokens(text)  # a repeated word counts twice, as in Lucene/ES and bm25s
        if not terms:
            return None
        per_field = [
            tantivy.Query.boolean_query(
                [(tantivy.Occur.Should, tantivy.Query.term_query(self.schema, f, t)) for t in terms]
            )
            for f in FIELDS
        ]
        return tantivy.Query.disjunction_max_query(per_field, tie_breaker=TIE_BREAKER)

    def _search(self, query: str, k: int) -> list[Hit]:
        q = self._query(query)
        if q is None:
            return []
        searcher = self.searcher
        out = []
        for score, addr in searcher.search(q, k, count=False).hits:
            d = searcher.doc(addr)
            out.append(Hit(d.get_first("id"), d.get_first("title") or "", d.get_first("text") or "", float(score)))
        return out
