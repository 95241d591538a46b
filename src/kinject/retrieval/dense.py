"""Dense retrieval: a sentence encoder (`kinject.encoders`) + faiss inner product (cosine on
normalized embeddings). Flat by default; `ivf_nlist > 0` trains an IVF index on the first
batch added (for large corpora; `nprobe` lists searched).

Files in the index dir: `dense.faiss` (the vectors: embeddings are stored with the index) and
`docs.sqlite` (id, source, title, text per faiss row id). Upserts and deletes remove faiss
rows by id (`IndexIDMap2` / IVF ids). The faiss file is replaced atomically after each change.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from kinject.encoders import Encoder, EncoderConfig, default_encoder_path, load_encoder
from kinject.errors import UserError
from kinject.io import atomic_path
from kinject.retrieval.base import (
    BaseRetriever,
    Doc,
    Hit,
    check_queries,
    progress_iter,
    register_backend,
)

FAISS_FILE = "dense.faiss"
DOCS_FILE = "docs.sqlite"


def passage_text(title: str, text: str) -> str:
    return f"{title}. {text}" if title else text


def _batched(items: Iterable, n: int):
    batch = []
    for x in items:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


@register_backend("dense")
class DenseRetriever(BaseRetriever):
    default_threads = 1  # queries are encoded together in one batch instead

    def __init__(self, path: Path, model: str | None = None, ivf_nlist: int = 0, nprobe: int = 16,
                 batch_size: int = 64, device: str = "cpu"):
        self.path = Path(path)
        self.model_opt = model  # None = the packaged MiniLM, resolved again at each open
        self.model_path = model or default_encoder_path()
        if not Path(self.model_path).exists():
            raise UserError(f"dense encoder not found: {self.model_path} (give a local sentence-transformers dir)")
        self.ivf_nlist, self.nprobe, self.batch_size, self.device = ivf_nlist, nprobe, batch_size, device
        self._encoder = None
        self.db = sqlite3.connect(str(self.path / DOCS_FILE), check_same_thread=False)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS docs (rid INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL,"
            " source TEXT NOT NULL, title TEXT, text TEXT)"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS docs_source ON docs(source)")
        self.db.commit()
        self.index = self._load_faiss()

    @classmethod
    def create(cls, path: Path, **options) -> DenseRetriever:
        Path(path).mkdir(parents=True, exist_ok=True)
        return cls(path, **options)

    @classmethod
    def open(cls, path: Path, options: dict) -> DenseRetriever:
        return cls(path, **options)

    def options(self) -> dict:
        return {"model": self.model_opt, "ivf_nlist": self.ivf_nlist, "nprobe": self.nprobe,
                "batch_size": self.batch_size, "device": self.device}

    # -- encoder and faiss -----------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:  # the model's own length limit: passages are longer than queries
            self._encoder = load_encoder(EncoderConfig(path=self.model_path, batch_size=self.batch_size,
                                                       device=self.device, max_length=None))
        return self._encoder

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.encode(list(texts))

    def _load_faiss(self):
        import faiss

        f = self.path / FAISS_FILE
        if f.is_file():
            index = faiss.read_index(str(f))
        else:
            index = None  # created on the first add, when the dimension is known
        if index is not None and self.ivf_nlist:
            faiss.extract_index_ivf(index).nprobe = self.nprobe
        return index

    def _new_faiss(self, dim: int, first: np.ndarray):
        import faiss

        if not self.ivf_nlist:
            return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if len(first) < self.ivf_nlist:
            raise UserError(
                f"IVF with ivf_nlist={self.ivf_nlist} needs at least that many passages in the first batch, "
                f"got {len(first)}: lower ivf_nlist or use a flat index (ivf_nlist=0)"
            )
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, self.ivf_nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(first)
        index.nprobe = self.nprobe
        return index

    def _save_faiss(self) -> None:
        import faiss

        with atomic_path(self.path / FAISS_FILE) as tmp:
            faiss.write_index(self.index, str(tmp))

    # -- protocol ---------------------------------------------------------------------------
    def add(self, docs: Iterable[Doc], progress: bool = False) -> int:
        # IVF trains on the first batch: make it large enough to hold a few points per list
        first_batch = max(self.batch_size * 16, self.ivf_nlist * 40) if self.ivf_nlist else self.batch_size * 16
        n = 0
        try:
            size = first_batch if self.index is None else self.batch_size * 16
            for batch in _batched(progress_iter(docs, "indexing (dense)", progress), size):
                batch = list({d.id: d for d in batch}.values())  # last one wins within a batch
                emb = self.encode([passage_text(d.title, d.text) for d in batch])
                if self.index is None:
                    self.index = self._new_faiss(emb.shape[1], emb)
                self._remove_rows(self.db.execute(
                    f"SELECT rid FROM docs WHERE id IN ({','.join('?' * len(batch))})", [d.id for d in batch]
                ).fetchall())
                start = self.db.execute("SELECT COALESCE(MAX(rid), -1) + 1 FROM docs").fetchone()[0]
                rids = np.arange(start, start + len(batch), dtype=np.int64)
                self.index.add_with_ids(emb, rids)
                self.db.executemany(
                    "INSERT INTO docs (rid, id, source, title, text) VALUES (?, ?, ?, ?, ?)",
                    [(int(r), d.id, d.source, d.title, d.text) for r, d in zip(rids, batch)],
                )
                n += len(batch)
            if self.index is not None:
                self._save_faiss()
            self.db.commit()
        except BaseException:
            self.db.rollback()
            self.index = self._load_faiss()  # back to the last saved state
            raise
        return n

    def _remove_rows(self, rows: list) -> None:
        if not rows:
            return
        rids = np.array([r[0] for r in rows], dtype=np.int64)
        self.index.remove_ids(rids)
        self.db.executemany("DELETE FROM docs WHERE rid = ?", [(int(r),) for r in rids])

    def delete(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        if self.index is None or not ids:
            return 0
        before = self.count()
        for chunk in _batched(ids, 500):
            marks = ",".join("?" * len(chunk))
            self._remove_rows(self.db.execute(
                f"SELECT rid FROM docs WHERE id IN ({marks}) OR source IN ({marks})", chunk + chunk
            ).fetchall())
        self._save_faiss()
        self.db.commit()
        return before - self.count()

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM docs").fetchone()[0])

    def _hits(self, scores: np.ndarray, rids: np.ndarray) -> list[Hit]:
        keep = [(float(s), int(r)) for s, r in zip(scores, rids) if r >= 0]
        if not keep:
            return []
        rows = self.db.execute(
            f"SELECT rid, id, title, text FROM docs WHERE rid IN ({','.join('?' * len(keep))})",
            [r for _, r in keep],
        ).fetchall()
        by_rid = {r[0]: r for r in rows}
        return [Hit(by_rid[r][1], by_rid[r][2] or "", by_rid[r][3] or "", s) for s, r in keep if r in by_rid]

    def _search(self, query: str, k: int) -> list[Hit]:
        return self._search_many([query], k)[0]

    def _search_many(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        if self.index is None or self.index.ntotal == 0:
            return [[] for _ in queries]
        scores, rids = self.index.search(self.encode(queries), k)
        return [self._hits(s, r) for s, r in zip(scores, rids)]

    def batch_search(self, queries: Sequence[str], k: int = 10, threads: int | None = None) -> list[list[Hit]]:
        check_queries(queries, k)
        out: list[list[Hit]] = []
        for chunk in _batched(queries, 1024):
            out.extend(self._search_many(chunk, k))
        return out

    def close(self) -> None:
        self.db.close()
