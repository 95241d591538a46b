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

from kinject.errors import UserError

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


# ROUGE -----------------------------------------------------------------------------------
# Hand-written because no ROUGE library is installed in the project venv (rouge-score would add
# nltk + absl for ~40 lines of n-gram counting). It follows Google's `rouge-score` exactly on
# ASCII text (lowercase, non-alphanumerics split tokens, no stemming, F-measure, ROUGE-L = LCS);
# the parity test pins values computed with rouge-score 0.1.2. One deliberate extension: letters
# outside ASCII stay in tokens (rouge-score drops them: "café" -> "caf").
_ROUGE_TOKEN = regex.compile(r"[\p{L}\p{N}]+")


def rouge_tokens(text: str) -> list[str]:
    return _ROUGE_TOKEN.findall(text.lower())


def _fmeasure(overlap: int, n_pred: int, n_gold: int) -> float:
    if overlap == 0 or n_pred == 0 or n_gold == 0:
        return 0.0
    p, r = overlap / n_pred, overlap / n_gold
    return 2 * p * r / (p + r)


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(prediction: str, gold: str, n: int) -> float:
    p, g = _ngrams(rouge_tokens(prediction), n), _ngrams(rouge_tokens(gold), n)
    return _fmeasure(sum((p & g).values()), sum(p.values()), sum(g.values()))


def _lcs_length(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, gold: str) -> float:
    p, g = rouge_tokens(prediction), rouge_tokens(gold)
    return _fmeasure(_lcs_length(p, g), len(p), len(g))


def rouge(prediction: str, golds: str | Sequence[str]) -> float:
    """Mean of ROUGE-1, ROUGE-2 and ROUGE-L F-measures (GRIP's "ROUGE"), max over golds."""
    return max(
        ((rouge_n(prediction, g, 1) + rouge_n(prediction, g, 2) + rouge_l(prediction, g)) / 3 for g in _as_list(golds)),
        default=0.0,
    )


ANSWER_METRICS["rouge"] = rouge


# Registry --------------------------------------------------------------------------------
# Every metric scores a batch: (predictions, golds per prediction, options) -> one value each.
# Answer metrics are per-example functions; model-based ones (semantic.py) batch for speed.
BatchMetric = Callable[[Sequence[str], Sequence[Sequence[str]], "dict | None"], list[float]]


def _per_example(fn: AnswerMetric) -> BatchMetric:
    def batch(predictions, golds, options=None):
        if options:
            raise UserError(f"metric {fn.__name__!r} takes no options (got {', '.join(options)})")
        return [fn(p, g) for p, g in zip(predictions, golds, strict=True)]

    return batch


def _bertscore_f1(predictions, golds, options=None):
    from kinject.eval.semantic import bertscore_f1

    return bertscore_f1(predictions, golds, options)


def _sts(predictions, golds, options=None):
    from kinject.eval.semantic import sts

    return sts(predictions, golds, options)


METRICS: dict[str, BatchMetric] = {name: _per_example(fn) for name, fn in ANSWER_METRICS.items()}
METRICS["bertscore_f1"] = _bertscore_f1
METRICS["sts"] = _sts


def register_metric(name: str):
    """Decorator: add a batch metric `fn(predictions, golds, options) -> list[float]`."""

    def deco(fn: BatchMetric) -> BatchMetric:
        METRICS[name] = fn
        return fn

    return deco


def check_metrics(names: Sequence[str], where: str = "") -> list[str]:
    """Validate metric names (one-line error naming the unknown one and the known ones)."""
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UserError(f"no metrics given{where}; known metrics: {', '.join(METRICS)}")
    for n in names:
        if n not in METRICS:
            raise UserError(f"unknown metric {n!r}{where}; known metrics: {', '.join(METRICS)}")
    return names


def check_metric_options(options: dict[str, dict], metrics: Sequence[str], where: str = "") -> None:
    """Options must name a metric that is used and keys that metric knows (checked up front)."""
    from kinject.config import build_config
    from kinject.eval.semantic import BertScoreOptions, StsOptions

    models = {"bertscore_f1": BertScoreOptions, "sts": StsOptions}
    for name, opts in options.items():
        check_metrics([name], where)
        if name not in metrics:
            raise UserError(f"options given for metric {name!r}{where}, which is not among the metrics scored")
        if name not in models:
            raise UserError(f"metric {name!r} takes no options{where}")
        build_config(models[name], dict(opts or {}), f"options of metric {name!r}{where}")


def compute_metric(
    name: str, predictions: Sequence[str], golds: Sequence[Sequence[str]], options: dict | None = None
) -> list[float]:
    check_metrics([name])
    golds = [_as_list(g) for g in golds]
    return METRICS[name](list(predictions), golds, options)
