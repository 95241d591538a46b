import pytest

from kinject.eval.metrics import (
    cover_em,
    dpr_tokens,
    exact_match,
    f1_score,
    has_answer,
    normalize_answer,
)


def test_squad_normalization():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple a day") == "apple day"


@pytest.mark.parametrize("pred,golds,em", [
    ("The Eiffel Tower", ["eiffel tower"], 1.0),
    ("Paris", ["London", "paris."], 1.0),
    ("", ["x"], 0.0),
    ("Paris, France", ["Paris"], 0.0),
])
def test_exact_match(pred, golds, em):
    assert exact_match(pred, golds) == em


def test_f1_and_cover():
    assert f1_score("eiffel tower paris", ["Eiffel Tower"]) == pytest.approx(0.8)
    assert f1_score("", ["x"]) == 0.0
    assert cover_em("it is in Paris, France", ["paris"]) == 1.0
    assert cover_em("Parisian", ["paris"]) == 0.0


def test_has_answer_dpr_semantics():
    assert dpr_tokens("Café 93.5%") == ["cafe\u0301", "93", ".", "5", "%"]
    assert has_answer("efficiency of 93.5 % at 450 K", ["93.5 %"]) == 1.0
    assert has_answer("efficiency of 93.55 %", ["93.5 %"]) == 0.0  # token 55 != 5
    assert has_answer("", ["x"]) == 0.0
