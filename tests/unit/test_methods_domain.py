"""Per-domain eval methods (`expert`, `text_injection`, `gag`) and `mixed` on tiny random models:
questions dispatched by their `domain`, input order kept, traces (background, expert_tokens,
added_prompt_tokens) counted right, bad options and unknown domains as one-line errors."""

from __future__ import annotations

import pytest

from kinject.errors import UserError
from kinject.eval.method import MethodContext, build_method
from kinject.prompts import general_messages, knowledge_messages, render

from .mixed_world import build_mixed_world

CTX = MethodContext(device="cpu", dtype="float32", batch_size=3, max_new_tokens=5)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizer, tiny_model_dir):
    return build_mixed_world(tmp_path_factory.mktemp("methods_mixed"), tiny_tokenizer, tiny_model_dir)


@pytest.fixture(scope="module")
def second_expert(tmp_path_factory, tiny_tokenizer):
    from kinject.models import TinySpec, make_tiny_model, save_model

    out = tmp_path_factory.mktemp("expert2") / "expert"
    save_model(make_tiny_model(TinySpec(vocab=600, hidden=64, layers=2, heads=4), tokenizer=tiny_tokenizer, seed=5),
               tiny_tokenizer, out)
    return out


ROWS = [
    {"id": "m0", "question": "Which lab developed Ferovia-2?", "domain": "materials", "instruction": "Be a chemist."},
    {"id": "a0", "question": "Through which receptor does Raxhusher signal?", "domain": "adjuvant"},
    {"id": "m1", "question": "What is the efficiency of Ferovia-3?", "domain": "materials"},
    {"id": "a1", "question": "What does Theha act on?", "domain": "adjuvant", "instruction": "Be an immunologist."},
    {"id": "m2", "question": "Which material is Norvex-1 made of?", "domain": "materials"},
]


def n_tokens(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_expert_dispatches_by_domain_and_keeps_order(tiny_model_dir, second_expert):
    from kinject.expert.evaluate import expert_prompt
    from kinject.generation import generate_texts
    from kinject.models import load_causal_lm

    m = build_method("expert", {"domains": {"materials": str(tiny_model_dir), "adjuvant": str(second_expert)},
                                "instruction": "Default."}, CTX)
    out = m.answer(ROWS)
    assert [o["trace"]["domain"] for o in out] == [r["domain"] for r in ROWS]
    assert [o["trace"]["instruction"] for o in out] == ["Be a chemist.", "Default.", "Default.", "Be an immunologist.",
                                                        "Default."]
    assert all(o["trace"]["added_prompt_tokens"] == 0 for o in out)
    # each answer is that domain's expert asked alone with the Stage II prompt
    for row, o in zip(ROWS, out):
        model, tok = load_causal_lm(tiny_model_dir if row["domain"] == "materials" else second_expert, device="cpu")
        want = generate_texts(model, tok, [expert_prompt(tok, o["trace"]["instruction"], row["question"])], 5, 1)[0]
        assert o["prediction"] == want.text
    with pytest.raises(UserError, match="has domain 'general' but the method has only adjuvant, materials") as e:
        m.answer([{"id": "g", "question": "Capital of Norland?", "domain": "general"}])
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="options of method 'expert'"):
        build_method("expert", {"model": str(tiny_model_dir)}, CTX)


def test_text_injection_puts_the_expert_background_in_the_prompt(world, tiny_model_dir):
    from kinject.memory.background import generate_backgrounds

    opts = {"base": world["base"], "instruction": "Answer briefly.",
            "domains": {d: {"expert": str(tiny_model_dir), "system": f"You are an expert in {d}.",
                            "max_background_tokens": 6} for d in ("materials", "adjuvant")}}
    m = build_method("text_injection", opts, CTX)
    out = m.answer(ROWS)
    tok = m.tokenizer
    for row, o in zip(ROWS, out):
        t = o["trace"]
        bg = generate_backgrounds(m.experts[row["domain"]][0], m.experts[row["domain"]][1], [row["question"]],
                                  ["last"], f"You are an expert in {row['domain']}.", 6, 1)[0]
        assert t["background"] == bg.text and t["expert_tokens"] == bg.n_tokens <= 6
        instr = row.get("instruction") or "Answer briefly."
        full = n_tokens(tok, render(tok, knowledge_messages(row["question"], bg.text, instr)))
        closed = n_tokens(tok, render(tok, general_messages(row["question"])))
        assert t["prompt_tokens"] == full and t["added_prompt_tokens"] == full - closed
    assert [m.answer([r])[0]["prediction"] for r in ROWS] == [o["prediction"] for o in out]


def test_gag_traces_slots_background_and_keeps_order(world):
    dom = world["domains"]
    opts = {"base": world["base"], "domains": {d: {k: dom[d][k] for k in ("expert", "injector", "system",
                                                                           "max_background_tokens")}
                                               for d in ("materials", "adjuvant")}}
    m = build_method("gag", opts, CTX)
    out = m.answer(ROWS)
    assert [o["trace"]["domain"] for o in out] == [r["domain"] for r in ROWS]
    for o in out:
        t = o["trace"]
        assert t["added_prompt_tokens"] == 4  # the slots
        assert isinstance(t["background"], str) and 0 < t["expert_tokens"] <= 4
    # the domain's own pipeline on that question alone gives the same answer (order kept, right injector)
    for row, o in zip(ROWS, out):
        got = m.pipes[row["domain"]].answer([row["question"]], [row.get("instruction")], 5)[0]
        assert (o["prediction"], o["trace"]["background"]) == (got.answer, got.background)
    with pytest.raises(UserError, match="domains.materials.injector is missing"):
        build_method("gag", {"base": world["base"], "domains": {"materials": {"expert": dom["materials"]["expert"]}}},
                     CTX)


def test_mixed_routes_with_ppr_and_the_harness_scores_routing(world, tmp_path):
    import json

    from kinject.eval.config import EvalConfig
    from kinject.eval.harness import run_eval
    from kinject.eval.results import read_results

    from .test_ppr_data import questions

    opts = {k: world[k] for k in ("banks", "base", "domains")}
    m = build_method("mixed", opts, CTX)
    assert (m.options.batch_size, m.options.max_new_tokens, m.options.device) == (3, 5, "cpu")  # from the eval ctx
    rows = []
    for d in ("general", "materials", "adjuvant"):
        rows += [{"id": f"{d}{i}", "question": q, "domain": d, "answer": ["x"]} for i, q in enumerate(questions(d, 3, 11))]
    qfile = tmp_path / "mixed.jsonl"
    qfile.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = EvalConfig(methods=[{"name": "mixed", "options": opts}], datasets=[{"name": "mixed", "path": qfile}],
                     metrics=["em"], device="cpu", batch_size=4, max_new_tokens=3, plots=True)
    res = {r.metric: r for r in run_eval(cfg, tmp_path / "ev", quiet=True)}
    assert res["routing_accuracy"].value == 1.0 and res["routing_accuracy"].n == 9
    assert res["added_prompt_tokens"].value == pytest.approx(6 * 4 / 9)  # GAG rows add 4 slots, general 0
    assert (tmp_path / "ev" / "routing_confusion__mixed__mixed.png").is_file()
    assert "routing_confusion__mixed__mixed.png" in (tmp_path / "ev" / "report.md").read_text()
    assert {r.metric for r in read_results(tmp_path / "ev")} >= {"em", "routing_accuracy", "expert_tokens"}
