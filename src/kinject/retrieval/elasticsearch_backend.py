"""Elasticsearch with the official client, set up as GRIP's release: English analyzer on
`title` and `text`, `multi_match` best_fields over both with tie_breaker 0.5.

The index dir records the server URL and the ES index name (the data lives in the server).
Bulk indexing streams with progress and retries transient errors (429/timeouts) with backoff;
`batch_search` is one `msearch` per 256 queries. The URL comes from the `url` option or
`KINJECT_ES_URL`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from kinject.errors import UserError
from kinject.retrieval.base import BaseRetriever, Doc, Hit, progress_iter, register_backend

SETTINGS = {"number_of_shards": 1, "number_of_replicas": 0}
MAPPINGS = {
    "properties": {
        "id": {"type": "keyword"},
        "source": {"type": "keyword"},
        "title": {"type": "text", "analyzer": "english"},
        "text": {"type": "text", "analyzer": "english"},
    }
}


def es_query(query: str, k: int) -> dict:
    return {
        "size": k,
        "query": {"multi_match": {"query": query, "fields": ["title", "text"],
                                  "type": "best_fields", "tie_breaker": 0.5}},
    }


@register_backend("elasticsearch")
class ElasticsearchRetriever(BaseRetriever):
    default_threads = 1  # msearch batches on the server instead

    def __init__(self, path: Path, url: str | None = None, index_name: str | None = None,
                 chunk_size: int = 500, max_retries: int = 5, timeout: int = 60):
        from elasticsearch import Elasticsearch

        self.path = Path(path)
        self.url = url or os.environ.get("KINJECT_ES_URL")
        if not self.url:
            raise UserError("the elasticsearch backend needs a server: set KINJECT_ES_URL or --opt url=http://host:9200")
        # default name from the directory (lowercase, ES-safe); `.name.tmp` build dirs keep the final name
        base = re.sub(r"^\.|\.[^.]*\.tmp$", "", self.path.name)
        self.index_name = index_name or ("kinject-" + re.sub(r"[^a-z0-9_-]+", "-", base.lower())).strip("-")
        self.chunk_size, self.max_retries, self.timeout = chunk_size, max_retries, timeout
        self.es = Elasticsearch(self.url, request_timeout=timeout, retry_on_timeout=True, max_retries=max_retries)

    @classmethod
    def create(cls, path: Path, **options) -> ElasticsearchRetriever:
        r = cls(path, **options)
        if r.es.indices.exists(index=r.index_name):
            r.es.indices.delete(index=r.index_name)
        r.es.indices.create(index=r.index_name, settings=SETTINGS, mappings=MAPPINGS)
        return r

    @classmethod
    def open(cls, path: Path, options: dict) -> ElasticsearchRetriever:
        r = cls(path, **options)
        if not r.es.indices.exists(index=r.index_name):
            raise UserError(f"Elasticsearch index {r.index_name!r} not found at {r.url}: rebuild it with `kinject index build`")
        return r

    def options(self) -> dict:
        return {"url": self.url, "index_name": self.index_name, "chunk_size": self.chunk_size,
                "max_retries": self.max_retries, "timeout": self.timeout}

    def add(self, docs: Iterable[Doc], progress: bool = False) -> int:
        from elasticsearch import helpers

        actions = (
            {"_index": self.index_name, "_id": d.id,
             "_source": {"id": d.id, "source": d.source, "title": d.title, "text": d.text}}
            for d in progress_iter(docs, "indexing (elasticsearch)", progress)
        )
        n = 0
        # streaming_bulk retries 429 rejections with exponential backoff; `_id` = id makes it an upsert
        for ok, _item in helpers.streaming_bulk(self.es, actions, chunk_size=self.chunk_size,
                                               max_retries=self.max_retries, initial_backoff=1,
                                               raise_on_error=True):
            n += int(ok)
        self.es.indices.refresh(index=self.index_name)
        return n

    def delete(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        if not ids:
            return 0
        res = self.es.delete_by_query(
            index=self.index_name, refresh=True, conflicts="proceed",
            query={"bool": {"should": [{"terms": {"id": ids}}, {"terms": {"source": ids}}]}},
        )
        return int(res.get("deleted", 0))

    def count(self) -> int:
        return int(self.es.count(index=self.index_name)["count"])

    @staticmethod
    def _hits(res: dict) -> list[Hit]:
        return [Hit(h["_source"]["id"], h["_source"].get("title", ""), h["_source"]["text"], float(h["_score"]))
                for h in res["hits"]["hits"]]

    def _search(self, query: str, k: int) -> list[Hit]:
        return self._hits(self.es.search(index=self.index_name, **es_query(query, k)))

    def batch_search(self, queries: Sequence[str], k: int = 10, threads: int | None = None) -> list[list[Hit]]:
        super().batch_search([], k)
        for i, q in enumerate(queries):
            if not isinstance(q, str) or not q.strip():
                raise UserError(f"empty query at position {i}: every query needs at least one word")
        out: list[list[Hit]] = []
        for s in range(0, len(queries), 256):
            body: list[dict] = []
            for q in queries[s : s + 256]:
                body += [{"index": self.index_name}, es_query(q, k)]
            for res in self.es.msearch(searches=body)["responses"]:
                if "error" in res:
                    raise RuntimeError(f"Elasticsearch search failed: {res['error']}")
                out.append(self._hits(res))
        return out

    def close(self) -> None:
        self.es.close()
