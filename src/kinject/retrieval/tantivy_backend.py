"""Embedded BM25 on disk with tantivy (the default backend).

Schema: `id` and `source` (raw terms, for upsert/delete), `title` and `text` (stored), and `body`
= title + text (indexed only), analyzed with `kinject_en`: tantivy's `en_stem` chain (simple
tokenizer, long-token removal, lowercase, English Snowball stemmer) plus the Lucene English stop
words, the list of Elasticsearch's `english` analyzer (dropping "the", "of"... also keeps queries
from scoring every passage). Queries are analyzed with the same chain in Python and scored as a
disjunction-max with tie_breaker 0.5 over one BM25 query per field, `body` and `title`: the
passage as one field (plain BM25, what bm25s computes) plus half of a title match when the body
wins. On the real QA sets (docs/realqa.md) this beats both plain BM25 and GRIP's Elasticsearch
`multi_match` best_fields over `title` and `text` (the earlier default, kept for indexes built
before: `body_field: false` in their metadata): with `text` alone a long passage that holds the
answer loses to a short title sharing one query word. Building the query from analyzed terms
(instead of tantivy's query parser) means no query syntax can break a search. Tantivy releases
the GIL while searching, so `batch_search` uses threads.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from pathlib import Path

import tantivy

from kinject.retrieval.base import BaseRetriever, Doc, Hit, progress_iter, register_backend

STORED_FIELDS = ("title", "text")
QUERY_FIELDS = ("body", "title")  # body = title + text
LEGACY_QUERY_FIELDS = ("title", "text")  # indexes built without `body` (body_field: false)
TIE_BREAKER = 0.5
DATA_DIR = "tantivy"


ANALYZER = "kinject_en"


@functools.cache
def english_analyzer() -> tantivy.TextAnalyzer:
    """The index's analyzer, also used for queries and by the bm25s parity reference."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(40))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stopword("english"))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def english_tokens(text: str) -> list[str]:
    return english_analyzer().analyze(text)


def _schema(body_field: bool) -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("id", stored=True, tokenizer_name="raw", index_option="basic")
    sb.add_text_field("source", stored=True, tokenizer_name="raw", index_option="basic")
    # term frequencies are all BM25 needs; no positions keeps the index smaller
    for f in STORED_FIELDS:
        sb.add_text_field(f, stored=True, tokenizer_name=ANALYZER, index_option="freq")
    if body_field:
        sb.add_text_field("body", stored=False, tokenizer_name=ANALYZER, index_option="freq")
    return sb.build()


@register_backend("tantivy")
class TantivyRetriever(BaseRetriever):
    def __init__(self, path: Path, heap_mb: int = 256, writer_threads: int = 0, body_field: bool = True):
        self.path = Path(path)
        self.heap_mb = heap_mb
        self.writer_threads = writer_threads
        self.body_field = body_field
        self.fields = QUERY_FIELDS if body_field else LEGACY_QUERY_FIELDS
        self.schema = _schema(body_field)
        self.index = tantivy.Index(self.schema, path=str(self.path / DATA_DIR), reuse=True)
        self.index.register_tokenizer(ANALYZER, english_analyzer())  # not persisted: every open
        self._refresh()

    @classmethod
    def create(cls, path: Path, heap_mb: int = 256, writer_threads: int = 0, body_field: bool = True) -> TantivyRetriever:
        (Path(path) / DATA_DIR).mkdir(parents=True, exist_ok=True)
        return cls(path, heap_mb=heap_mb, writer_threads=writer_threads, body_field=body_field)

    @classmethod
    def open(cls, path: Path, options: dict) -> TantivyRetriever:
        # metadata without `body_field` was written before the field existed: title + text only
        return cls(path, **{"body_field": False, **options})

    def options(self) -> dict:
        return {"heap_mb": self.heap_mb, "writer_threads": self.writer_threads, "body_field": self.body_field}

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
        seen: set[str] = set()  # into an empty index: delete only when an id repeats (cheaper)
        n = 0
        try:
            for d in progress_iter(docs, "indexing (tantivy)", progress):
                if upsert or d.id in seen:
                    writer.delete_documents_by_term("id", d.id)  # removes the earlier copy: last one wins
                else:
                    seen.add(d.id)
                fields = {"body": f"{d.title} {d.text}"} if self.body_field else {}
                writer.add_document(tantivy.Document(id=d.id, source=d.source, title=d.title, text=d.text, **fields))
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
            for f in self.fields
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
