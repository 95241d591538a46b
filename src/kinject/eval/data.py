"""QA rows and predictions: reading, validating and matching them. The one home of a question
row (`Question`) and of its gold answers (`gold_answers`), for the harness and every evaluator.

A reference row needs a question (`question`, or `input` as the world's QA files name it) and
gold answers (`answer`, `answers` or `output`, the first present: a list or a string). `id` is
optional. Predictions are matched to references by `id` when both carry one, else by the
question text (whitespace-normalized). A `prediction` that is a list (GRIP's release writes the
answer of every turn) is scored by its last element.

`where` keeps rows whose fields match: a scalar is equality, a list is membership
(`type: [bridge, compositional]`), `{prefix: "hotpotqa:"}` matches a string's start (the real QA
files name their source in the id, `hotpotqa:5a8c...`, so one file serves two datasets).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kinject.errors import UserError
from kinject.io import iter_jsonl, iter_jsonl_numbered

QUESTION_FIELDS = ("question", "input")
GOLD_FIELDS = ("answer", "answers", "output")  # the first present holds the gold; never shown to a method


def _question_key(text: str) -> str:
    return " ".join(str(text).split())


@dataclass
class Question:
    """One QA item; `row` keeps every original field (instruction, domain, hops, popularity...)."""

    question: str
    answers: list[str]
    id: str | None = None
    row: dict[str, Any] = field(default_factory=dict)

    def as_input(self) -> dict[str, Any]:
        """What a Method's `answer(batch)` receives: the row with normalized `id` and `question`,
        without the gold answer fields (`answer`, `answers`, `output`), so no method can peek."""
        row = {k: v for k, v in self.row.items() if k not in GOLD_FIELDS}
        return {**row, "id": self.id, "question": self.question}


def gold_field(row: dict[str, Any]) -> str | None:
    return next((f for f in GOLD_FIELDS if f in row), None)


def gold_answers(row: dict[str, Any], loc: str, hint: str = "") -> list[str]:
    """A row's gold answers as a non-empty list of strings: a string is one answer, numbers are
    written out, blank answers are dropped. `loc` (file:line) and `hint` go into the errors."""
    name = gold_field(row)
    if name is None:
        raise UserError(f"{loc}: missing answers (expected a field {' or '.join(map(repr, GOLD_FIELDS))})"
                        + (f"; {hint}" if hint else ""))
    raw = row[name]
    if isinstance(raw, (str, int, float)):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(a, (str, int, float)) for a in raw):
        raise UserError(f"{loc}: {name!r} must be a string or a list of strings, got {raw!r}")
    golds = [str(a) for a in raw if str(a).strip()]
    if not golds:
        raise UserError(f"{loc}: empty gold answer list in {name!r} (every question needs an answer to be scored)")
    return golds


def _matches(value: Any, cond: Any) -> bool:
    if isinstance(cond, dict):
        return isinstance(value, str) and value.startswith(str(cond["prefix"]))
    if isinstance(cond, list):
        return value in cond
    return value == cond


def check_where(where: dict[str, Any] | None, source: str = "where") -> None:
    """A dict condition must be `{prefix: str}` (the only operator): a typo fails before any model loads."""
    for key, cond in (where or {}).items():
        if isinstance(cond, dict) and (set(cond) != {"prefix"} or not isinstance(cond["prefix"], str)):
            raise UserError(f"{source}: condition on {key!r} must be a value, a list of values or "
                            f"{{prefix: TEXT}}, got {cond!r}")


def row_matches(row: dict[str, Any], where: dict[str, Any] | None) -> bool:
    return not where or all(_matches(row.get(k), c) for k, c in where.items())


def group_by(questions: Sequence[Question], field_name: str) -> dict[str, list[int]]:
    """Question positions per value of a row field (e.g. `type`), in order of first appearance;
    rows without the field are left out."""
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        value = q.row.get(field_name)
        if value is not None:
            groups.setdefault(str(value), []).append(i)
    return groups


def answer_lookup(files: Sequence[str | os.PathLike]) -> dict[str, dict]:
    """Question text -> the first row holding it (with answers) across `files`."""
    out: dict[str, dict] = {}
    for f in files:
        for row in iter_jsonl(f):
            qf = next((k for k in QUESTION_FIELDS if k in row), None)
            if qf is not None and gold_field(row) is not None:
                out.setdefault(_question_key(row[qf]), row)
    return out


def load_questions(
    path: str | os.PathLike, where: dict[str, Any] | None = None, limit: int | None = None,
    answers_from: Sequence[str | os.PathLike] = (),
) -> list[Question]:
    """Read a QA file (questions stripped, gold answers by `gold_answers`); `where` keeps rows
    whose fields equal the given values; `limit` keeps the first N kept rows.

    `answers_from`: files to take a row's missing answers from, matched by question text (the
    world's mixed online set carries only `question` and `domain`; its questions come from the
    domain and general QA files). The matched row's other fields (e.g. `instruction`) are added
    too; the row's own fields win."""
    p = Path(path)
    check_where(where, f"{p}: where")
    lookup = answer_lookup(answers_from) if answers_from else {}
    out: list[Question] = []
    for lineno, row in iter_jsonl_numbered(p):  # file line numbers, blank lines counted
        loc = f"{p}:{lineno}"
        qf = next((f for f in QUESTION_FIELDS if f in row), None)
        if qf is None:
            raise UserError(f"{loc}: no question field (expected one of {', '.join(QUESTION_FIELDS)})")
        if not isinstance(row[qf], str) or not row[qf].strip():
            raise UserError(f"{loc}: {qf!r} must be a non-empty string")
        if gold_field(row) is None and lookup:
            found = lookup.get(_question_key(row[qf]))
            if found is None:
                raise UserError(f"{loc}: no answers in the row and its question is in none of the answers_from "
                                f"files ({', '.join(map(str, answers_from))})")
            row = {**{k: v for k, v in found.items() if k not in QUESTION_FIELDS}, **row}
        if not row_matches(row, where):
            continue
        golds = gold_answers(row, loc, "this file cannot be scored (or name files to look them up in with "
                                       "`answers_from`)")
        qid = row.get("id")
        out.append(Question(row[qf].strip(), golds, None if qid is None else str(qid), row))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        extra = f" matching {where}" if where else ""
        raise UserError(f"{p}: no questions{extra}")
    return out


def prediction_text(value: Any) -> str:
    """A prediction as text: lists (one answer per turn) are scored by their last element."""
    if isinstance(value, list):
        value = value[-1] if value else ""
    return "" if value is None else str(value)


def load_predictions(path: str | os.PathLike) -> list[dict]:
    p = Path(path)
    rows = []
    for lineno, row in iter_jsonl_numbered(p, required=("prediction",)):
        if "id" not in row and not any(f in row for f in QUESTION_FIELDS):
            raise UserError(f"{p}:{lineno}: a prediction needs an 'id' or a 'question' to be matched")
        rows.append(row)
    return rows


@dataclass
class Matched:
    predictions: list[str]  # one per question, "" when missing
    missing: list[Question]  # questions without a prediction (scored as wrong)
    unmatched: int  # predictions that fit no question (ignored)


def match_predictions(questions: list[Question], predictions: list[dict]) -> Matched:
    by_id: dict[str, dict] = {}
    by_q: dict[str, dict] = {}
    for row in predictions:
        if row.get("id") is not None:
            by_id.setdefault(str(row["id"]), row)
        q = next((row[f] for f in QUESTION_FIELDS if f in row), None)
        if q is not None:
            by_q.setdefault(_question_key(q), row)
    used: set[int] = set()
    texts, missing = [], []
    for q in questions:
        hit = by_id.get(q.id) if q.id is not None else None
        if hit is None:
            hit = by_q.get(_question_key(q.question))
        if hit is None:
            missing.append(q)
            texts.append("")
        else:
            used.add(id(hit))
            texts.append(prediction_text(hit["prediction"]))
    return Matched(texts, missing, sum(id(r) not in used for r in predictions))
