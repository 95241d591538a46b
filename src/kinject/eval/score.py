"""Scoring: predictions x gold answers x metric names -> `results.jsonl` rows (+ per-question)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kinject.eval.data import Question
from kinject.eval.metrics import check_metrics, compute_metric
from kinject.eval.results import ResultRow, metric_rows


@dataclass
class Scored:
    rows: list[ResultRow]
    per_question: dict[str, list[float]]  # metric -> one value per question


def score_answers(
    questions: Sequence[Question],
    predictions: Sequence[str],
    metrics: Sequence[str],
    method: str,
    dataset: str,
    split: str,
    metric_options: dict[str, dict] | None = None,
) -> Scored:
    """Mean of each metric over all questions (a missing prediction is "" and scores 0)."""
    metrics = check_metrics(metrics)
    golds = [q.answers for q in questions]
    per_q = {m: compute_metric(m, predictions, golds, (metric_options or {}).get(m)) for m in metrics}
    n = len(questions)
    return Scored(metric_rows(method, dataset, split, {m: sum(v) / n for m, v in per_q.items()}, n), per_q)
