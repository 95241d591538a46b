"""A real QA set: a questions JSONL `{id, question, answer: [...], type, supporting_pids: [...]}`
and the passages TSV its gold ids point into (DPR order: id, text, title; see data/realqa).

Everything is read and checked before anything is written: a malformed passage row (file:line),
a repeated passage or question id (both lines), a question naming gold passages the corpus does
not hold, a missing or ill-typed field: one `UserError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kinject.errors import UserError
from kinject.io import iter_jsonl_numbered
from kinject.retrieval.base import Doc
from kinject.retrieval.ingest import read_passages

REQUIRED = ("id", "question", "answer", "type", "supporting_pids")


@dataclass(frozen=True)
class QaItem:
    id: str
    question: str
    answers: list[str]
    type: str
    gold: list[str]  # supporting passage ids
    line: int = 0  # in the questions file, for messages


@dataclass
class QaSet:
    questions: list[QaItem]
    passages: list[Doc]
    questions_path: Path
    passages_path: Path


def _strings(value, where: str, name: str) -> list[str]:
    if isinstance(value, str):  # one answer given as a string
        value = [value]
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, (str, int)) and not isinstance(v, bool) and str(v).strip() for v in value)):
        raise UserError(f"{where}: {name!r} must be a non-empty list of non-empty strings, got {value!r}")
    return [str(v).strip() for v in value]


def read_questions(path: str | os.PathLike) -> list[QaItem]:
    p = Path(path)
    items: list[QaItem] = []
    first: dict[str, int] = {}
    for lineno, row in iter_jsonl_numbered(p, required=REQUIRED):
        where = f"{p}:{lineno}"
        qid = str(row["id"]).strip()
        if not qid or isinstance(row["id"], (bool, dict, list)):
            raise UserError(f"{where}: 'id' must be a non-empty string, got {row['id']!r}")
        if qid in first:
            raise UserError(f"{where}: duplicate question id {qid!r} (first on line {first[qid]}); ids must be unique")
        first[qid] = lineno
        if not isinstance(row["question"], str) or not row["question"].strip():
            raise UserError(f"{where}: 'question' must be a non-empty string")
        if not isinstance(row["type"], str) or not row["type"].strip():
            raise UserError(f"{where}: 'type' must be a non-empty string (e.g. bridge, comparison, 1-hop)")
        items.append(QaItem(qid, row["question"].strip(), _strings(row["answer"], where, "answer"),
                            row["type"].strip(), _strings(row["supporting_pids"], where, "supporting_pids"), lineno))
    if not items:
        raise UserError(f"{p}: no questions (empty file)")
    return items


def load_qa_set(questions: str | os.PathLike, passages: str | os.PathLike) -> QaSet:
    """Read and cross-check a questions file and its passages (nothing is written)."""
    items = read_questions(questions)
    docs = list(read_passages(passages, unique_ids=True))
    if not docs:
        raise UserError(f"{passages}: no passages")
    ids = {d.id for d in docs}
    absent = [(q, [g for g in q.gold if g not in ids]) for q in items]
    absent = [(q, miss) for q, miss in absent if miss]
    if absent:
        q, miss = absent[0]
        more = f" ({len(absent) - 1} more questions too)" if len(absent) > 1 else ""
        raise UserError(f"{questions}:{q.line}: question {q.id!r} names supporting_pids absent from {passages}: "
                        f"{', '.join(map(repr, miss[:5]))}{more}; the gold passages must be in the corpus")
    return QaSet(items, docs, Path(questions), Path(passages))
