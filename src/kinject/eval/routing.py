"""Routing metrics (PPR, as in the GAG paper): micro accuracy, macro accuracy, per-domain accuracy, confusion.

Labels are domain NAMES (never ids). Plain functions over (gold, predicted) label lists. The
counting is written out (a few lines) rather than taken from scikit-learn, whose
confusion_matrix / balanced_accuracy warn on runs that see a single domain even when the label
set is given; the unit tests check parity with scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kinject.errors import UserError


def _check(gold: Sequence[str], pred: Sequence[str]) -> None:
    if len(gold) != len(pred):
        raise UserError(f"routing metrics need one prediction per gold label (got {len(pred)} for {len(gold)})")
    if not gold:
        raise UserError("routing metrics need at least one labelled question")


def routing_accuracy(gold: Sequence[str], pred: Sequence[str]) -> float:
    """Micro accuracy: fraction of questions sent to their own domain."""
    _check(gold, pred)
    return sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold)


def per_domain_accuracy(gold: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
    """Accuracy (recall) within each gold domain."""
    _check(gold, pred)
    out: dict[str, float] = {}
    for domain in sorted(set(gold)):
        idx = [i for i, g in enumerate(gold) if g == domain]
        out[domain] = sum(pred[i] == domain for i in idx) / len(idx)
    return out


def macro_accuracy(gold: Sequence[str], pred: Sequence[str]) -> float:
    """Mean of the per-domain accuracies (= scikit-learn's balanced accuracy)."""
    per = per_domain_accuracy(gold, pred)
    return sum(per.values()) / len(per)


def confusion(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str] | None = None) -> tuple[list[str], list[list[int]]]:
    """(labels, matrix) with matrix[i][j] = questions of gold labels[i] routed to labels[j]."""
    _check(gold, pred)
    labels = list(labels) if labels is not None else sorted(set(gold) | set(pred))
    index = {name: i for i, name in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, pred, strict=True):
        if g in index and p in index:
            matrix[index[g]][index[p]] += 1
    return labels, matrix


@dataclass
class RoutingReport:
    n: int
    accuracy: float
    macro_accuracy: float
    per_domain: dict[str, float]
    labels: list[str]
    confusion: list[list[int]]


def routing_report(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str] | None = None) -> RoutingReport:
    names, matrix = confusion(gold, pred, labels)
    return RoutingReport(
        n=len(gold),
        accuracy=routing_accuracy(gold, pred),
        macro_accuracy=macro_accuracy(gold, pred),
        per_domain=per_domain_accuracy(gold, pred),
        labels=names,
        confusion=matrix,
    )
