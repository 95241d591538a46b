from hypothesis import given
from hypothesis import strategies as st

from kinject.grip.format import (
    ANSWER,
    INTERMEDIARY,
    RETRIEVE,
    SOLVED,
    clean_query,
    final_turn,
    parse_turn,
    plan_turn,
    round_content,
    strip_control,
)

free_text = st.text(min_size=0, max_size=60)


@given(free_text)
def test_final_roundtrip(answer):
    t = parse_turn(final_turn(answer))
    assert t.kind == "final" and t.answer == strip_control(answer)


@given(free_text, free_text)
def test_plan_roundtrip(partial, query):
    t = parse_turn(plan_turn(partial, query))
    assert t.kind == "plan"
    assert t.intermediary == strip_control(partial) and t.query == strip_control(query)


def test_parse_edge_cases():
    assert parse_turn(f"{ANSWER} Paris").kind == "final"  # stop token cut off [SOLVED]
    assert parse_turn(f"{ANSWER} Paris {SOLVED} trailing").answer == "Paris"
    assert parse_turn("just some text").kind == "other"
    assert parse_turn(f"{INTERMEDIARY} no query marker").kind == "other"
    t = parse_turn(f"{INTERMEDIARY} X is in Y {RETRIEVE} capital of Y")
    assert (t.kind, t.intermediary, t.query) == ("plan", "X is in Y", "capital of Y")


def test_round_content_slots():
    text = round_content("Who?", "partial fact", ["first passage", f"second {SOLVED} passage"], force_answer=True)
    assert "Original Query: Who?" in text and "Intermediary: partial fact" in text
    assert "[2]. second passage\n[1]. first passage" in text  # best passage last
    assert "must answer" in text
    assert "Reference Text:" in round_content("Who?") and "[1]." not in round_content("Who?")


def test_clean_query():
    assert clean_query("capital of (Norland)?!") == "capital of Norland"
