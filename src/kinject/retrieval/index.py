"""Index operations behind `kinject index build|add|delete`: read passages, chunk them like the
index was built, hand them to the backend, keep the metadata file up to date.

`build_index` works in a temporary sibling directory and renames it into place only after the
backend has committed and the metadata file is written, so an interrupted build leaves no
directory that looks like an index (and an existing index stays intact until the swap).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kinject.errors import UserError
from kinject.io import atomic_dir
from kinject.retrieval.base import (
    META_FILE,
    check_backend,
    get_backend,
    open_index,
    read_meta,
    write_meta,
)
from kinject.retrieval.ingest import (
    IngestStats,
    check_chunking,
    chunk_docs,
    read_ids,
    read_passages,
)


@dataclass
class IndexReport:
    index: str
    backend: str
    added: int = 0
    deleted: int = 0
    count: int = 0
    read: int = 0
    skipped: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def build_index(
    input_path: str | os.PathLike,
    out: str | os.PathLike,
    backend: str = "tantivy",
    chunk_words: int | None = None,
    chunk_overlap: int = 0,
    options: dict[str, Any] | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> IndexReport:
    cls = get_backend(backend)
    out = Path(out)
    if chunk_words:
        check_chunking(chunk_words, chunk_overlap)
    if out.exists():
        if (out / META_FILE).is_file():
            check_backend(read_meta(out), out, backend)  # rebuilding with another backend: refuse
        elif any(out.iterdir()):
            raise UserError(f"--out {out} exists and is not a kinject index: choose an empty or new directory")
    stats = IngestStats()
    docs = chunk_docs(read_passages(input_path, skip_bad, stats), chunk_words, chunk_overlap)
    chunking = {"words": chunk_words, "overlap": chunk_overlap} if chunk_words else None
    with atomic_dir(out) as tmp:
        retriever = cls.create(tmp, **(options or {}))
        try:
            added = retriever.add(docs, progress=progress)
            if added == 0:
                raise UserError(f"{input_path}: no passages to index")
            count = retriever.count()
            write_meta(tmp, backend, retriever.options(), chunking, {"source_file": str(input_path)})
        finally:
            retriever.close()
    return IndexReport(str(out), backend, added=added, count=count, read=stats.read, skipped=stats.skipped)


def add_to_index(
    index: str | os.PathLike, input_path: str | os.PathLike, skip_bad: bool = False,
    backend: str | None = None, progress: bool = True,
) -> IndexReport:
    meta = read_meta(index)
    check_backend(meta, index, backend)
    chunking = meta.get("chunking") or {}
    stats = IngestStats()
    docs = chunk_docs(read_passages(input_path, skip_bad, stats), chunking.get("words"), chunking.get("overlap", 0))
    with open_index(index) as r:
        added = r.add(docs, progress=progress)
        count = r.count()
    return IndexReport(str(index), meta["backend"], added=added, count=count, read=stats.read, skipped=stats.skipped)


def delete_from_index(index: str | os.PathLike, ids_path: str | os.PathLike, backend: str | None = None) -> IndexReport:
    meta = read_meta(index)
    check_backend(meta, index, backend)
    ids = read_ids(ids_path)
    with open_index(index) as r:
        deleted = r.delete(ids)
        count = r.count()
    return IndexReport(str(index), meta["backend"], deleted=deleted, count=count)
