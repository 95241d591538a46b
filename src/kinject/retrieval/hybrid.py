"""Hybrid retrieval: reciprocal-rank fusion (Cormack et al., 2009) of two backends.

The index dir holds two complete sub-indexes, `first/` and `second/` (default tantivy + dense),
each with its own metadata; adds and deletes go to both. A passage's fused score is
`sum 1 / (rrf_k + rank)` over the two ranked lists (rank from 1), each cut at `depth`.
`rrf_k` is 5, not the paper's 60: on the real QA sets (docs/realqa.md) a small constant lets the
top of each list decide, and tantivy + MiniLM fused so ranks above either alone on recall@5;
`kinject bench fusion` re-fuses a bench's saved rankings to choose it for another corpus.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from kinject.errors import UserError
from kinject.retrieval.base import (
    BaseRetriever,
    Doc,
    Hit,
    get_backend,
    open_index,
    register_backend,
    write_meta,
)

PARTS = ("first", "second")
DEFAULT_RRF_K = 5
LEGACY_RRF_K = 60  # indexes whose metadata predates the recorded rrf_k


def rrf(rankings: Sequence[Sequence[Hit]], k: int, rrf_k: int = DEFAULT_RRF_K) -> list[Hit]:
    scores: dict[str, float] = {}
    best: dict[str, Hit] = {}
    for hits in rankings:
        for rank, h in enumerate(hits, 1):
            scores[h.id] = scores.get(h.id, 0.0) + 1.0 / (rrf_k + rank)
            best.setdefault(h.id, h)
    order = sorted(scores, key=lambda i: (-scores[i], i))[:k]
    return [Hit(i, best[i].title, best[i].text, scores[i]) for i in order]


@register_backend("hybrid")
class HybridRetriever(BaseRetriever):
    default_threads = 1

    def __init__(self, path: Path, parts: list[BaseRetriever], rrf_k: int = DEFAULT_RRF_K, depth: int = 50):
        self.path, self.parts, self.rrf_k, self.depth = Path(path), parts, rrf_k, depth

    @classmethod
    def create(cls, path: Path, first: str = "tantivy", second: str = "dense", rrf_k: int = DEFAULT_RRF_K, depth: int = 50,
               first_options: dict | None = None, second_options: dict | None = None) -> HybridRetriever:
        if "hybrid" in (first, second):
            raise UserError("a hybrid index fuses two non-hybrid backends (e.g. first=tantivy second=dense)")
        parts = []
        for name, backend, opts in zip(PARTS, (first, second), (first_options, second_options)):
            sub = Path(path) / name
            sub.mkdir(parents=True, exist_ok=True)
            r = get_backend(backend).create(sub, **(opts or {}))
            write_meta(sub, backend, r.options(), None)
            parts.append(r)
        return cls(path, parts, rrf_k=rrf_k, depth=depth)

    @classmethod
    def open(cls, path: Path, options: dict) -> HybridRetriever:
        parts = [open_index(Path(path) / name) for name in PARTS]
        return cls(path, parts, rrf_k=options.get("rrf_k", LEGACY_RRF_K), depth=options.get("depth", 50))

    def options(self) -> dict:
        return {"rrf_k": self.rrf_k, "depth": self.depth, "parts": [p.name for p in self.parts]}

    def add(self, docs: Iterable[Doc], progress: bool = False) -> int:
        docs_list = list(docs)  # both parts read the same passages
        n = self.parts[0].add(docs_list, progress=progress)
        self.parts[1].add(docs_list, progress=progress)
        return n

    def delete(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        n = self.parts[0].delete(ids)
        self.parts[1].delete(ids)
        return n

    def count(self) -> int:
        return self.parts[0].count()

    def _search(self, query: str, k: int) -> list[Hit]:
        depth = max(self.depth, k)
        return rrf([p.search(query, depth) for p in self.parts], k, self.rrf_k)

    def batch_search(self, queries: Sequence[str], k: int = 10, threads: int | None = None) -> list[list[Hit]]:
        depth = max(self.depth, k)
        lists = [p.batch_search(queries, depth, threads) for p in self.parts]
        return [rrf(pair, k, self.rrf_k) for pair in zip(*lists)]

    def close(self) -> None:
        for p in self.parts:
            p.close()
