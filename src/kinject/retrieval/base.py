"""The retrieval contract: `Doc`, `Hit`, the `Retriever` protocol, the backend registry and
the on-disk index directory (a metadata file naming its backend, built atomically).

An index directory holds `kinject-index.json` (backend, options, chunking) written LAST, so a
directory without it is never taken for an index; a build happens under a temporary name and
is renamed into place only when complete. Backends live one per module and are registered by
name; `create_index` / `open_index` are the only ways the rest of kinject touches them.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from kinject.errors import UserError
from kinject.io import write_json_atomic

META_FILE = "kinject-index.json"
FORMAT_VERSION = 1
DEFAULT_BACKEND = "tantivy"


@dataclass(frozen=True)
class Doc:
    """A passage to index. `source` is the document a chunk was cut from (= id when unchunked)."""

    id: str
    text: str
    title: str = ""
    source: str = ""

    def __post_init__(self):
        if not self.source:
            object.__setattr__(self, "source", self.id)


@dataclass(frozen=True)
class Hit:
    id: str
    title: str
    text: str
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Retriever(Protocol):
    """What every backend provides. `add` is an upsert by id; `delete` removes passages whose id
    or source document id is given (so deleting a document removes all of its chunks)."""

    name: ClassVar[str]

    def add(self, docs: Iterable[Doc], progress: bool = False) -> int: ...
    def delete(self, ids: Iterable[str]) -> int: ...
    def search(self, query: str, k: int = 10) -> list[Hit]: ...
    def batch_search(self, queries: Sequence[str], k: int = 10, threads: int | None = None) -> list[list[Hit]]: ...
    def count(self) -> int: ...
    def close(self) -> None: ...


def check_query(query: str, k: int) -> None:
    if not isinstance(query, str) or not query.strip():
        raise UserError("empty query: give a question with at least one word")
    check_k(k)


def check_k(k: int) -> None:
    if not isinstance(k, int) or k <= 0:
        raise UserError(f"k must be a positive integer, got {k!r}")


class BaseRetriever:
    """Shared plumbing: argument checks, a thread-pool `batch_search`, context manager.

    Subclasses implement `_search(query, k)`, `add`, `delete`, `count`, and the classmethods
    `create(path, **options)` (a new empty index in an existing empty dir) and `open(path, options)`.
    """

    name: ClassVar[str] = ""
    # backends whose search releases the GIL get real parallelism from threads
    default_threads: ClassVar[int] = min(4, os.cpu_count() or 1)

    @classmethod
    def create(cls, path: Path, **options: Any) -> BaseRetriever:
        raise NotImplementedError

    @classmethod
    def open(cls, path: Path, options: dict) -> BaseRetriever:
        raise NotImplementedError

    def options(self) -> dict:
        """Options to record in the metadata file (what `open` needs to reopen the index)."""
        return {}

    def search(self, query: str, k: int = 10) -> list[Hit]:
        check_query(query, k)
        return self._search(query, k)

    def batch_search(self, queries: Sequence[str], k: int = 10, threads: int | None = None) -> list[list[Hit]]:
        check_k(k)
        for i, q in enumerate(queries):
            if not isinstance(q, str) or not q.strip():
                raise UserError(f"empty query at position {i}: every query needs at least one word")
        n = threads or self.default_threads
        if n <= 1 or len(queries) < 2:
            return [self._search(q, k) for q in queries]
        with ThreadPoolExecutor(n) as ex:
            return list(ex.map(lambda q: self._search(q, k), queries))

    def _search(self, query: str, k: int) -> list[Hit]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- registry ---------------------------------------------------------------------------------
# name -> "module:Class", imported on first use so `import kinject.retrieval` stays light.
_BACKENDS: dict[str, str | type[BaseRetriever]] = {
    "tantivy": "kinject.retrieval.tantivy_backend:TantivyRetriever",
    "elasticsearch": "kinject.retrieval.elasticsearch_backend:ElasticsearchRetriever",
    "dense": "kinject.retrieval.dense:DenseRetriever",
    "hybrid": "kinject.retrieval.hybrid:HybridRetriever",
}


def register_backend(name: str) -> Callable[[type[BaseRetriever]], type[BaseRetriever]]:
    def deco(cls: type[BaseRetriever]) -> type[BaseRetriever]:
        cls.name = name
        _BACKENDS[name] = cls
        return cls

    return deco


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(name: str) -> type[BaseRetriever]:
    entry = _BACKENDS.get(name)
    if entry is None:
        raise UserError(f"unknown retrieval backend {name!r}; choose one of: {', '.join(backend_names())}")
    if isinstance(entry, str):
        module, _, cls_name = entry.partition(":")
        entry = getattr(importlib.import_module(module), cls_name)
        _BACKENDS[name] = entry
    return entry


# --- index directories ------------------------------------------------------------------------
def read_meta(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"index directory not found: {p} (build one with `kinject index build`)")
    meta_file = p / META_FILE
    if not meta_file.is_file():
        raise UserError(
            f"{p} is not a complete kinject index (no {META_FILE}; an interrupted build?): "
            "rebuild it with `kinject index build`"
        )
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{meta_file}: malformed index metadata ({e.msg}); rebuild the index") from None
    if not isinstance(meta, dict) or "backend" not in meta:
        raise UserError(f"{meta_file}: index metadata has no 'backend'; rebuild the index")
    return meta


def write_meta(path: Path, backend: str, options: dict, chunking: dict | None, extra: dict | None = None) -> dict:
    meta = {
        "backend": backend,
        "format": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "chunking": chunking,
        "options": options,
        **(extra or {}),
    }
    write_json_atomic(Path(path) / META_FILE, meta)
    return meta


def check_backend(meta: dict, path: str | os.PathLike, expected: str | None) -> None:
    if expected is not None and meta["backend"] != expected:
        raise UserError(
            f"index {path} was built by backend {meta['backend']!r}, not {expected!r}: "
            f"use --backend {meta['backend']} or another index directory"
        )


def open_index(path: str | os.PathLike, backend: str | None = None) -> BaseRetriever:
    """Open an existing index; `backend`, when given, must be the one that built it."""
    meta = read_meta(path)
    check_backend(meta, path, backend)
    return get_backend(meta["backend"]).open(Path(path), meta.get("options") or {})


def index_chunking(path: str | os.PathLike) -> dict | None:
    return read_meta(path).get("chunking")


def progress_iter(items: Iterable, description: str, enabled: bool = True, total: int | None = None):
    """Iterate with a rich progress bar on stderr (a plain pass-through when disabled)."""
    if not enabled:
        yield from items
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*cols, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        for i, item in enumerate(items, 1):
            yield item
            if i % 256 == 0:
                bar.update(task, completed=i)
