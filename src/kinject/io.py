"""File I/O shared by every stage: JSONL with line-numbered errors and atomic writes.

Atomic = written to a temporary sibling and renamed on success, so an interrupted run never
leaves a partial file or directory that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kinject.errors import UserError


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} not found: {p}")
    if not p.is_file():
        raise UserError(f"{what} is not a file: {p}")
    return p


def require_dir(path: str | os.PathLike, what: str = "directory", hint: str = "") -> Path:
    p = Path(path)
    if not p.is_dir():
        extra = f" ({hint})" if hint else ""
        raise UserError(f"{what} not found: {p}{extra}")
    return p


def iter_jsonl_numbered(path: str | os.PathLike, required: Sequence[str] = ()) -> Iterator[tuple[int, dict]]:
    """Yield (line number, dict) per non-blank line, so callers can name `file:line` in their
    own value checks; a malformed line or a missing field names file:line here."""
    p = require_file(path, "JSONL file")
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{p}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{p}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise UserError(f"{p}:{lineno}: missing field(s) {', '.join(map(repr, missing))}")
            yield lineno, row


def iter_jsonl(path: str | os.PathLike, required: Sequence[str] = ()) -> Iterator[dict]:
    """Yield one dict per non-blank line; a malformed line or missing field names file:line."""
    for _, row in iter_jsonl_numbered(path, required):
        yield row


def read_jsonl(
    path: str | os.PathLike, required: Sequence[str] = (), allow_empty: bool = False
) -> list[dict]:
    rows = list(iter_jsonl(path, required))
    if not rows and not allow_empty:
        raise UserError(f"{path}: no records (empty file)")
    return rows


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dst)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Build a directory under a temporary name; swap it into place only on success."""
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        yield tmp
        if dst.exists():
            if not overwrite:
                raise UserError(f"output already exists: {dst} (remove it or choose another --out)")
            old = dst.with_name(f".{dst.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dst, old)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
