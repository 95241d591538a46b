"""Passage ingestion: DPR `psgs_w100.tsv` (id, text, title with a header) and JSONL
`{id, title, text}`, plus word-window chunking of long documents for private corpora.

A malformed line is a `UserError` naming file:line; with `skip_bad=True` it is counted in
`IngestStats` and skipped instead. Chunk ids are `<doc id>#<n>` and each chunk keeps the
document id as `source`, so hits trace back to the document and deleting the document id
removes all of its chunks. `unique_ids=True` makes a repeated passage id an error naming both
lines (an index treats it as an update, last one wins; a corpus with gold ids must not).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kinject.errors import UserError
from kinject.io import require_file
from kinject.retrieval.base import Doc

CHUNK_SEP = "#"


@dataclass
class IngestStats:
    read: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)  # first few skipped lines, for the report

    def bad(self, where: str, why: str, skip_bad: bool) -> None:
        if not skip_bad:
            raise UserError(f"{where}: {why} (fix the line or pass --skip-bad to skip bad lines)")
        self.skipped += 1
        if len(self.problems) < 5:
            self.problems.append(f"{where}: {why}")


def _fmt(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    raise UserError(f"{path}: unknown passage file format; use a .tsv (DPR: id, text, title) or .jsonl file")


def read_passages(path: str | Path, skip_bad: bool = False, stats: IngestStats | None = None,
                  unique_ids: bool = False) -> Iterator[Doc]:
    """Yield `Doc`s from a DPR TSV or a JSONL file (format from the extension)."""
    p = require_file(path, "passage file")
    stats = stats if stats is not None else IngestStats()
    first: dict[str, int] | None = {} if unique_ids else None  # id -> line it was first seen on
    if _fmt(p) == "tsv":
        yield from _read_tsv(p, skip_bad, stats, first)
    else:
        yield from _read_jsonl(p, skip_bad, stats, first)


def _check_unique(first: dict[str, int] | None, doc_id: str, p: Path, lineno: int) -> None:
    if first is None:
        return
    if doc_id in first:
        raise UserError(f"{p}:{lineno}: duplicate passage id {doc_id!r} (first on line {first[doc_id]}); "
                        "passage ids must be unique")
    first[doc_id] = lineno


def _read_tsv(p: Path, skip_bad: bool, stats: IngestStats, first: dict[str, int] | None = None) -> Iterator[Doc]:
    csv.field_size_limit(sys.maxsize)
    with p.open(encoding="utf-8", newline="") as f:
        # DPR quotes fields containing quotes/tabs ("" escapes): csv's default dialect reads that.
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise UserError(f"{p}: empty TSV file (expected a header line: id, text, title)")
        cols = [h.strip().lower() for h in header]
        if "id" not in cols or "text" not in cols:
            raise UserError(f"{p}:1: TSV header must name columns id and text (and title), got {header!r}")
        i_id, i_text = cols.index("id"), cols.index("text")
        i_title = cols.index("title") if "title" in cols else None
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                stats.bad(f"{p}:{reader.line_num}", f"malformed TSV ({e})", skip_bad)
                continue
            where = f"{p}:{reader.line_num}"
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(cols):
                stats.bad(where, f"expected {len(cols)} tab-separated columns, got {len(row)}", skip_bad)
                continue
            doc_id, text = row[i_id].strip(), row[i_text].strip()
            if not doc_id or not text:
                stats.bad(where, "empty id or text", skip_bad)
                continue
            _check_unique(first, doc_id, p, reader.line_num)
            stats.read += 1
            yield Doc(id=doc_id, text=text, title=row[i_title].strip() if i_title is not None else "")


def _read_jsonl(p: Path, skip_bad: bool, stats: IngestStats, first: dict[str, int] | None = None) -> Iterator[Doc]:
    # not kinject.io.iter_jsonl: that stops at the first bad line, --skip-bad must go on
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{p}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                stats.bad(where, f"malformed JSON ({e.msg})", skip_bad)
                continue
            if not isinstance(row, dict):
                stats.bad(where, f"expected a JSON object, got {type(row).__name__}", skip_bad)
                continue
            doc_id, text, title = row.get("id"), row.get("text"), row.get("title", "")
            if doc_id is None or not str(doc_id).strip():
                stats.bad(where, "missing field 'id'", skip_bad)
                continue
            if not isinstance(text, str) or not text.strip():
                stats.bad(where, "missing or empty field 'text'", skip_bad)
                continue
            _check_unique(first, str(doc_id).strip(), p, lineno)
            stats.read += 1
            yield Doc(id=str(doc_id).strip(), text=text.strip(), title=str(title or "").strip())


def read_ids(path: str | Path) -> list[str]:
    """Ids to delete: a text file with one id per line, or JSONL with an `id` field per line."""
    p = require_file(path, "id file")
    ids: list[str] = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if s.startswith("{"):
            try:
                row = json.loads(s)
            except json.JSONDecodeError as e:
                raise UserError(f"{p}:{lineno}: malformed JSON ({e.msg})") from None
            if "id" not in row:
                raise UserError(f"{p}:{lineno}: missing field 'id'")
            s = str(row["id"])
        ids.append(s)
    if not ids:
        raise UserError(f"{p}: no ids (expected one id per line)")
    return ids


def chunk_doc(doc: Doc, words: int, overlap: int = 0) -> list[Doc]:
    """Cut a document into windows of `words` words, consecutive windows sharing `overlap`."""
    check_chunking(words, overlap)
    toks = doc.text.split()
    step = words - overlap
    out = []
    start = 0
    while True:
        piece = toks[start : start + words]
        out.append(Doc(id=f"{doc.id}{CHUNK_SEP}{len(out)}", text=" ".join(piece), title=doc.title, source=doc.id))
        if start + words >= len(toks):
            return out
        start += step


def check_chunking(words: int, overlap: int) -> None:
    if words <= 0:
        raise UserError(f"--chunk-words must be positive, got {words}")
    if not 0 <= overlap < words:
        raise UserError(f"--chunk-overlap must be >= 0 and smaller than --chunk-words ({words}), got {overlap}")


def chunk_docs(docs: Iterable[Doc], words: int | None, overlap: int = 0) -> Iterator[Doc]:
    if not words:
        yield from docs
        return
    check_chunking(words, overlap)
    for d in docs:
        yield from chunk_doc(d, words, overlap)
