"""ROUGE parity with Google's rouge-score and the metric registry (hand-checked cases)."""

import pytest

from kinject.errors import UserError
from kinject.eval.metrics import (
    METRICS,
    check_metrics,
    compute_metric,
    rouge,
    rouge_l,
    rouge_n,
    rouge_tokens,
)

# (prediction, gold) -> (R1 F, R2 F, RL F) computed with rouge-score 0.1.2
# (RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False).score(gold, prediction)).
ROUGE_SCORE_REFERENCE = [
    ("the cat sat on the mat", "the cat is on the mat", (0.833333, 0.6, 0.833333)),
    ("The Eiffel Tower, Paris!", "Eiffel tower in Paris", (0.75, 0.333333, 0.75)),
    ("93.5 %", "93.5%", (1.0, 1.0, 1.0)),
    ("a b c d", "d c b a", (1.0, 0.0, 0.25)),
    ("", "anything", (0.0, 0.0, 0.0)),
    ("police killed the gunman", "the gunman killed police", (1.0, 0.333333, 0.5)),
    ("Velmora Institute", "Velmora Institute", (1.0, 1.0, 1.0)),
    ("x", "x y", (0.666667, 0.0, 0.666667)),
]


@pytest.mark.parametrize("pred,gold,ref", ROUGE_SCORE_REFERENCE)
def test_rouge_parity_with_rouge_score(pred, gold, ref):
    got = (rouge_n(pred, gold, 1), rouge_n(pred, gold, 2), rouge_l(pred, gold))
    assert got == pytest.approx(ref, abs=1e-6)
    assert rouge(pred, [gold]) == pytest.approx(sum(ref) / 3, abs=1e-6)


def test_rouge_multiple_golds_unicode_and_punctuation():
    # max over golds: the second gold matches exactly
    assert rouge("Ferovia-7", ["Velmora", "ferovia 7"]) == 1.0
    # letters outside ASCII are kept (rouge-score would drop "é" and see "caf")
    assert rouge_tokens("Café Zürich, 450 K!") == ["café", "zürich", "450", "k"]
    assert rouge("café", ["cafe"]) == 0.0
    assert rouge("", ["x", "y"]) == 0.0
    assert rouge("anything", []) == 0.0


def test_registry_names_and_batch_api():
    for name in ("em", "f1", "cover_em", "has_answer", "rouge", "bertscore_f1", "sts"):
        assert name in METRICS
    preds = ["The Eiffel Tower", "Paris", "", "it is 93.5 % here"]
    golds = [["eiffel tower"], ["London", "paris."], ["x"], ["93.5 %"]]
    assert compute_metric("em", preds, golds) == [1.0, 1.0, 0.0, 0.0]
    # DPR tokens keep symbols: gold "paris." = ["paris", "."] is not inside ["paris"]
    assert compute_metric("has_answer", preds, golds) == [1.0, 0.0, 0.0, 1.0]
    assert compute_metric("f1", ["eiffel tower paris"], ["Eiffel Tower"]) == [pytest.approx(0.8)]  # str gold


def test_registry_errors_are_user_errors():
    with pytest.raises(UserError, match="unknown metric 'bleu'.*known metrics: em"):
        check_metrics(["em", "bleu"])
    with pytest.raises(UserError, match="no metrics"):
        check_metrics([" "])
    with pytest.raises(UserError, match="takes no options"):
        compute_metric("em", ["a"], [["a"]], {"x": 1})
