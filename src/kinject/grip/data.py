"""Question files for GRIP: `{question, answer}` JSONL rows, checked with file:line errors, and
the split of a world QA file into the evaluation subsets (popular / long-tail / 2-hop)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kinject.errors import UserError


@dataclass
class QA:
    question: str
    answers: list[str]
    row: dict = field(default_factory=dict)  # the whole input row (world fields: hops, ...)
    where: str = ""


def read_qa(path: str | Path, limit: int | None = None) -> list[QA]:
    """Rows need a non-empty `question` and `answer` (a string or a non-empty list of strings)."""
    from kinject.io import iter_jsonl_numbered, require_file

    p = require_file(path, "questions file")
    out: list[QA] = []
    for lineno, row in iter_jsonl_numbered(p, required=("question", "answer")):
        where = f"{p}:{lineno}"
        q, ans = row["question"], row["answer"]
        if not isinstance(q, str) or not q.strip():
            raise UserError(f"{where}: 'question' must be a non-empty string")
        golds = [ans] if isinstance(ans, str) else ans
        if (not isinstance(golds, list) or not golds
                or not all(isinstance(g, str) and g.strip() for g in golds)):
            raise UserError(f"{where}: 'answer' must be a non-empty string or a non-empty list of strings")
        out.append(QA(q.strip(), list(golds), row, where))
        if limit and len(out) >= limit:
            break
    if not out:
        raise UserError(f"{p}: no questions (the file is empty)")
    return out


def subset_names(qa: QA, dataset: str) -> list[str]:
    """Evaluation subsets of one question: always `dataset`; world rows add `_popular` /
    `_longtail` (1-hop, by popularity) or `_2hop` (any multi-hop question)."""
    names = [dataset]
    hops = qa.row.get("hops")
    if isinstance(hops, int) and hops >= 2:
        names.append(f"{dataset}_2hop")
    elif qa.row.get("popularity") in ("popular", "longtail"):
        names.append(f"{dataset}_{qa.row['popularity']}")
    return names
