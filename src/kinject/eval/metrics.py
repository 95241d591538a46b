"""Answer metrics with their reference definitions (one home; every method is scored here).

- `em`, `f1`: SQuAD normalization (NFD, lowercase, strip punctuation and articles, collapse
  spaces), max over gold answers.
- `cover_em`: the normalized gold appears inside the normalized prediction.
- `has_answer`: DPR semantics: NFD, lowercase, tokenize into word runs and single non-space
  symbols; correct if any gold token sequence appears in the prediction's tokens.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence

import regex

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)
# DPR's SimpleTokenizer: runs of letters/digits/marks, or one symbol that is not space/control.
# Needs the `regex` module for \p{..} classes (a transformers dependency).
_DPR_TOKEN = regex.compile(r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])", regex.IGNORECASE | regex.UNICODE | regex.MULTILINE)


def normalize_answer(text: str) -> str:
    """SQuAD normalization (with NFD first, as the GRIP release applies it)."""
    text = unicodedata.normalize("NFD", text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_list(golds: str | Sequence[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else [g for g in golds if g is not None]


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in _as_list(golds)))


def _f1_single(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: str | Sequence[str]) -> float:
    return max((_f1_single(prediction, g) for g in _as_list(golds)), default=0.0)


def cover_em(prediction: str, golds: str | Sequence[str]) -> float:
    p = f" {normalize_answer(prediction)} "
    return float(any(normalize_answer(g) and f" {normalize_answer(g)} " in p for g in _as_list(golds)))


def dpr_tokens(text: str) -> list[str]:
    text = unicodedata.normalize("NFD", text).lower()
    return [m.group() for m in _DPR_TOKEN.finditer(text)]


def has_answer(prediction: str, golds: str | Sequence[str]) -> float:
    toks = dpr_tokens(prediction)
    for g in _as_list(golds):
        gt = dpr_tokens(g)
        if not gt:
            continue
        for i in range(len(toks) - len(gt) + 1):
            if toks[i : i + len(gt)] == gt:
                return 1.0
    return 0.0


AnswerMetric = Callable[[str, Sequence[str]], float]
ANSWER_METRICS: dict[str, AnswerMetric] = {
    "em": exact_match,
    "f1": f1_score,
    "cover_em": cover_em,
    "has_answer": has_answer,
}
