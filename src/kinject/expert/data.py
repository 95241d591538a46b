"""Data for the expert stages: corpus packing (Stage I) and chat examples (Stage II, QA mix).

Packing is written here rather than taken from a library because the GAG paper fixes the exact
recipe (join documents with a separator, cut fixed blocks, drop the ragged tail, hold out
whole documents) and each step is a few lines that a test can check exactly.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from kinject.errors import UserError
from kinject.io import read_jsonl
from kinject.prompts import background_messages, expert_messages, with_answer

QA_FIELDS = ("instruction", "input", "output")


# ----------------------------------------------------------------------------- Stage I
def load_corpus(path: str | Path) -> list[str]:
    """Documents (field `text`) of a JSONL corpus; empty files or only blank texts are errors."""
    rows = read_jsonl(path, required=["text"], allow_empty=True)
    docs = []
    for i, row in enumerate(rows):
        if not isinstance(row["text"], str):
            raise UserError(f"{path}: record {i + 1}: field 'text' must be a string")
        if row["text"].strip():
            docs.append(row["text"])
    if not docs:
        raise UserError(f"empty corpus: {path} has no non-blank 'text' (fill it or point corpus= at another file)")
    return docs


def holdout(items: Sequence, share: float, seed: int, what: str = "documents") -> tuple[list, list]:
    """(train, val): hold out whole items (at least one) after a seeded shuffle, order kept."""
    if len(items) < 2:
        raise UserError(f"{len(items)} {what}: need at least 2 to hold one out for validation")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = min(len(items) - 1, max(1, round(len(items) * share)))
    val = set(order[:n_val])
    return ([x for i, x in enumerate(items) if i not in val], [x for i, x in enumerate(items) if i in val])


def tokenize_documents(tokenizer, docs: Sequence[str], batch: int = 1024) -> list[list[int]]:
    out: list[list[int]] = []
    for i in range(0, len(docs), batch):
        out.extend(tokenizer(list(docs[i : i + batch]), add_special_tokens=False)["input_ids"])
    return out


def pack_blocks(token_docs: Sequence[Sequence[int]], sep_ids: Sequence[int], block_size: int) -> list[list[int]]:
    """Concatenate documents, each followed by the separator, and cut blocks of `block_size`.

    The ragged tail (fewer than `block_size` tokens) is dropped, as in the GAG paper.
    """
    stream: list[int] = []
    for ids in token_docs:
        stream.extend(ids)
        stream.extend(sep_ids)
    n = len(stream) // block_size
    return [stream[i * block_size : (i + 1) * block_size] for i in range(n)]


# ----------------------------------------------------------------------------- Stage II
def load_qa(path: str | Path, need_background: bool = False) -> list[dict]:
    """QA rows with instruction/input/output (and background when the background task is on)."""
    required = [*QA_FIELDS, *(["background"] if need_background else [])]
    rows = read_jsonl(path, required=required, allow_empty=True)
    if not rows:
        raise UserError(f"empty QA file: {path} has no records")
    return rows


def qa_conversation(row: dict) -> list[dict]:
    """Stage II example: user = instruction + '\\nQuestion: ' + input, assistant = output."""
    return with_answer(expert_messages(row["instruction"], row["input"]), str(row["output"]))


def background_conversation(row: dict, system: str = "") -> list[dict]:
    """Background-writing example: the expert states the fact (the row's `background`)."""
    return with_answer(background_messages(row["input"], system), str(row["background"]))


def sft_conversations(rows: Sequence[dict], background: bool = False, system: str = "") -> list[list[dict]]:
    convs = [qa_conversation(r) for r in rows]
    if background:
        convs += [background_conversation(r, system) for r in rows]
    return convs


def render_conversations(tokenizer, convs: Sequence[list[dict]], **template_kwargs) -> list[str]:
    """Full chat texts (for QA mixed into DAPT, where the loss covers the whole text)."""
    return [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=False, **template_kwargs)
        for c in convs
    ]
