"""GRIP RL rewards on hand-made turns: imitation (format + BLEU-1, in [0, 1.5]) and outcome."""

from __future__ import annotations

import math

import pytest

from kinject.errors import UserError
from kinject.grip.format import final_turn, plan_turn
from kinject.grip.reward import (
    OutcomeSettings,
    bleu1,
    imitation_score,
    make_reward_func,
    outcome_score,
    reference_is_valid,
)


def test_bleu1_matches_the_formula():
    assert bleu1("Paris", "Paris") == 1.0
    assert bleu1("the city of Paris", "Paris") == pytest.approx(1 / 3)  # article dropped, 1 of 3 match
    # shorter than the reference: brevity penalty exp(1 - 3/1)
    assert bleu1("Paris", "Paris in France") == pytest.approx(math.exp(1 - 3))
    assert bleu1("Lyon", "Paris") == 0.0
    assert bleu1("", "") == 1.0 and bleu1("", "Paris") == 0.0
    # clipped counts: repeating a matching word does not add precision
    assert bleu1("paris paris", "paris lyon") == pytest.approx(0.5)


def test_imitation_final_turns():
    ref = final_turn("Quamton")
    assert imitation_score(final_turn("Quamton"), ref) == pytest.approx(1.5)
    assert imitation_score(final_turn("Herfos"), ref) == pytest.approx(0.5)  # right form, wrong content
    # `[ANSWER]` without `[SOLVED]` (cut at the stop token) is still a final turn
    assert imitation_score("[ANSWER] Quamton", ref) == pytest.approx(1.5)


def test_imitation_plan_turns_average_intermediary_and_query():
    ref = plan_turn("Vexkom Tribe was born in Nelthashim", "country of Nelthashim")
    exact = imitation_score(plan_turn("Vexkom Tribe was born in Nelthashim", "country of Nelthashim"), ref)
    assert exact == pytest.approx(1.5)
    half = imitation_score(plan_turn("Vexkom Tribe was born in Nelthashim", "mayor of Lyon"), ref)
    # intermediary BLEU-1 = 1; query "mayor of lyon" vs "country of nelthashim": 1/3 unigrams
    assert half == pytest.approx(0.5 + (1 + 1 / 3) / 2)


def test_imitation_form_mismatch_and_other_get_nothing():
    assert imitation_score(plan_turn("x", "Quamton"), final_turn("Quamton")) == 0.0
    assert imitation_score("Quamton", final_turn("Quamton")) == 0.0  # no control tokens: form "other"
    assert imitation_score(final_turn("a"), plan_turn("a", "b")) == 0.0


def test_imitation_is_bounded():
    ref = plan_turn("some partial fact here", "a new query")
    for pred in ["", "[ANSWER]", plan_turn("", ""), plan_turn("some some some", "a a a a a"),
                 final_turn("some partial fact here"), plan_turn("some partial fact here", "a new query")]:
        assert 0.0 <= imitation_score(pred, ref) <= 1.5


def test_unparseable_reference_is_rejected():
    assert not reference_is_valid("just text")
    assert reference_is_valid(final_turn("x")) and reference_is_valid(plan_turn("x", "y"))
    with pytest.raises(UserError, match="reference turn"):
        imitation_score(final_turn("x"), "just text")


def test_outcome_correct_answer_with_retrievals():
    s = OutcomeSettings(metric="em", format_bonus=0.1, retrieval_cost=0.05)
    # two rounds: a plan (one retrieval) then a final answer with the gold (case/article-insensitive)
    assert outcome_score("the Quamton", ["Quamton"], 1, ["plan", "final"], s) == pytest.approx(1.0 + 0.1 - 0.05)
    assert outcome_score("Quamton", ["Quamton"], 0, ["final"], s) == pytest.approx(1.1)
    assert outcome_score("Herfos", ["Quamton"], 3, ["plan", "plan", "plan", "final"], s) == pytest.approx(0.1 - 0.15)
    # a turn of neither form: no format bonus
    assert outcome_score("Quamton", ["Quamton"], 0, ["other"], s) == pytest.approx(1.0)
    # any gold counts
    assert outcome_score("Q2", ["Q1", "Q2"], 0, ["final"], s) == pytest.approx(1.1)


def test_outcome_f1():
    s = OutcomeSettings(metric="f1", format_bonus=0.0, retrieval_cost=0.0)
    assert outcome_score("Bremgresmo", ["Bremgresmo Company"], 0, ["final"], s) == pytest.approx(2 / 3)


def test_reward_funcs_have_trl_signature_and_names():
    imit = make_reward_func("imitation")
    assert imit.__name__ == "imitation_reward"
    assert imit(prompts=["q", "q"], completions=[final_turn("a"), "a"], reference=[final_turn("a")] * 2,
                golds=[[], []]) == [1.5, 0.0]
    out = make_reward_func("outcome", OutcomeSettings(retrieval_cost=0.5, format_bonus=0.0))
    got = out(prompts=["q"], completions=["x"], answer=["a"], golds=[["a"]], n_retrievals=[1], turn_kinds=[["final"]])
    assert got == [pytest.approx(0.5)]
    with pytest.raises(UserError, match="unknown GRIP reward"):
        make_reward_func("bleu")
