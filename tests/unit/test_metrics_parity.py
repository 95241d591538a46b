"""em / f1 / cover_em / has_answer against their reference definitions, on hand-checked cases.

References, copied here as the test oracle: the official SQuAD v1.1 `evaluate-v1.1.py`
(normalize_answer, exact_match_score, f1_score) and DPR's `has_answer` (SimpleTokenizer, uncased,
NFD-normalized text). kinject applies NFD before SQuAD normalization as the GRIP release does;
on text without combining characters the two agree exactly.
"""

import re
import string
from collections import Counter

import pytest

from kinject.eval.metrics import cover_em, exact_match, f1_score, has_answer, normalize_answer


def squad_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def squad_f1(prediction, ground_truth):
    prediction_tokens = squad_normalize(prediction).split()
    ground_truth_tokens = squad_normalize(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def squad_max_over(metric, prediction, golds):
    return max(metric(prediction, g) for g in golds)


CASES = [
    ("The Eiffel Tower", ["Eiffel Tower"]),
    ("an apple, a pear and THE plum", ["apple pear and plum"]),
    ("Velmora Institute", ["the Velmora Institute", "VI"]),
    ("93.5 %", ["93.5%", "93.5 percent"]),
    ("in 1840.", ["1840"]),
    ("Ferovia-7", ["Ferovia 7", "ferovia-7"]),
    ("tin-doped ceria", ["ceria doped with tin"]),
    ("Theatre", ["the atre"]),  # "the" inside a word is not an article
    ("a", ["an"]),  # articles only: both normalize to ""
    ("", ["x"]),
]


@pytest.mark.parametrize("pred,golds", CASES)
def test_em_f1_match_squad_reference(pred, golds):
    ref_em = squad_max_over(lambda p, g: float(squad_normalize(p) == squad_normalize(g)), pred, golds)
    assert exact_match(pred, golds) == ref_em
    # SQuAD's f1 scores 0 when either side normalizes to nothing; kinject scores two empty
    # normalized strings as a match (1.0), the one documented difference ("a" vs "an").
    ref_f1 = squad_max_over(squad_f1, pred, golds)
    if squad_normalize(pred) or any(squad_normalize(g) for g in golds):
        assert f1_score(pred, golds) == pytest.approx(ref_f1)
    else:
        assert f1_score(pred, golds) == 1.0 and ref_f1 == 0


def test_hand_checked_values():
    assert exact_match("Velmora Institute", ["the Velmora Institute", "VI"]) == 1.0
    assert f1_score("tin-doped ceria", ["ceria doped with tin"]) == pytest.approx(2 * (1 / 2 * 1 / 4) / (1 / 2 + 1 / 4))
    assert exact_match("Ferovia-7", ["Ferovia 7"]) == 0.0  # punctuation removed, not spaced: "ferovia7"
    assert cover_em("the answer is 93.5 % at 450 K", ["93.5%"]) == 1.0  # "935" inside the prediction
    assert cover_em("in the year 18400", ["1840"]) == 0.0  # whole words only


def test_unicode_nfd():
    composed, decomposed = "Z\u00fcrich", "Zu\u0308rich"
    assert composed != decomposed
    assert exact_match(composed, [decomposed]) == 1.0
    assert has_answer(f"It lies in {composed}.", [decomposed]) == 1.0
    assert normalize_answer("Café") == "cafe\u0301"  # accents kept (NFD), so "Cafe" differs
    assert exact_match("Café", ["Cafe"]) == 0.0
    assert f1_score("Café Zürich", ["Zürich"]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("pred,golds,expected", [
    ("It was founded in 1840 by Ada.", ["1840"], 1.0),
    ("It was founded in 18401.", ["1840"], 0.0),  # token boundary
    ("efficiency: 93.5%", ["93.5 %"], 1.0),  # symbols are tokens of their own
    ("The VELMORA institute", ["Velmora Institute"], 1.0),  # uncased
    ("Velmora", ["Velmora Institute"], 0.0),  # whole gold sequence needed
    ("", ["x"], 0.0),
    ("anything", ["  ", "..."], 0.0),  # a gold with no word tokens is skipped / "..." absent
    ("nothing", [], 0.0),
])
def test_has_answer_dpr_reference(pred, golds, expected):
    assert has_answer(pred, golds) == expected
