from hypothesis import given
from hypothesis import strategies as st

from kinject.grip.format import (
    ANSWER,
    INSTRUCTION,
    INTERMEDIARY,
    RETRIEVE,
    SOLVED,
    clean_query,
    final_turn,
    parse_turn,
    plan_turn,
    round_content,
    round_messages,
    strip_control,
)
from kinject.prompts import KNOWLEDGE_REQUEST, general_messages

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
    text = round_content("Who?", "partial fact", ["first passage", f"second {SOLVED} passage"])
    assert text.startswith(KNOWLEDGE_REQUEST) and "Question: Who?" in text and "Intermediary: partial fact" in text
    assert "[2]. second passage\n[1]. first passage" in text  # best passage last
    # empty slots: exactly the base's closed-book prompt (the base recalls facts only under it)
    assert round_content("Who?") == general_messages("Who?")[0]["content"]
    assert "Intermediary" not in round_content("Who?", references=["p"])


def test_round_messages_instruction_is_the_system_message():
    plain, forced = round_messages("Who?"), round_messages("Who?", force_answer=True)
    assert [m["role"] for m in plain] == ["system", "user"] and plain[0]["content"] == INSTRUCTION
    assert "must answer" in forced[0]["content"] and "must answer" not in plain[0]["content"]
    assert forced[1] == plain[1]


def test_clean_query():
    assert clean_query("capital of (Norland)?!") == "capital of Norland"
