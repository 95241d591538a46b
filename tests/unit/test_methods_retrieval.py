"""Eval methods `rag_k{k}` and `grip` on tiny random models and a real tantivy index: trace
keys, added prompt tokens counted against the closed-book prompt, order kept across batches,
bad options as one-line errors."""

from __future__ import annotations

import json

import pytest

from kinject.errors import UserError
from kinject.eval.method import MethodContext, build_method
from kinject.prompts import general_messages, knowledge_messages, render

CTX = MethodContext(device="cpu", dtype="float32", batch_size=2, max_new_tokens=6)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from unit.test_grip_synth import write_world

    qa, index = write_world(tmp_path_factory.mktemp("methods_world"))
    rows = [json.loads(x) for x in qa.read_text().splitlines()]
    return [{"id": f"q{i}", "question": r["question"]} for i, r in enumerate(rows)], index


def n_tokens(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_rag_traces_hits_and_added_tokens(world, tiny_model_dir):
    from kinject.retrieval.base import open_index
    from kinject.retrieval.rag import format_passages

    rows, index = world
    m = build_method("rag_k2", {"model": str(tiny_model_dir), "index": str(index)}, CTX)
    assert m.name == "rag_k2"
    out = m.answer(rows)
    assert len(out) == len(rows)
    with open_index(index) as r:
        hits = r.batch_search([x["question"] for x in rows], 2)
    for row, o, h in zip(rows, out, hits):
        t = o["trace"]
        assert t["hits"] == [x.id for x in h] and t["n_retrievals"] == 1
        # added tokens = the knowledge prompt with the 2 plain passages minus the closed-book prompt
        full = n_tokens(m.tokenizer, render(m.tokenizer, knowledge_messages(row["question"], format_passages(h, "plain"))))
        closed = n_tokens(m.tokenizer, render(m.tokenizer, general_messages(row["question"])))
        assert t["prompt_tokens"] == full and t["added_prompt_tokens"] == full - closed > 0
    # order kept: each answer equals the one for that question alone
    solo = [m.answer([row])[0]["prediction"] for row in rows]
    assert [o["prediction"] for o in out] == solo
    k1 = build_method("rag_k1", {"model": str(tiny_model_dir), "index": str(index)}, CTX).answer(rows[:2])
    assert all(len(o["trace"]["hits"]) == 1 for o in k1)
    assert k1[0]["trace"]["added_prompt_tokens"] < out[0]["trace"]["added_prompt_tokens"]


def test_oracle_reads_each_questions_gold_passages(tiny_model_dir, tmp_path):
    """The oracle's prompt is the RAG prompt with the question's own `supporting_pids` (in that
    order) as the passages; a question without golds or with an unknown id is one error line."""
    from kinject.retrieval.base import Hit
    from kinject.retrieval.rag import format_passages

    passages = tmp_path / "p.tsv"
    passages.write_text("id\ttext\ttitle\n1\tEsk flows through Velmora.\tEsk\n2\tVelmora is a town.\tVelmora\n"
                        "3\tUnrelated text.\tOther\n")
    m = build_method("oracle", {"model": str(tiny_model_dir), "passages": str(passages), "passage_format": "numbered"},
                     CTX)
    rows = [{"id": "a", "question": "Which river flows through Velmora?", "supporting_pids": ["2", "1"]},
            {"id": "b", "question": "What is Velmora?", "supporting_pids": ["2"]}]
    out = m.answer(rows)
    assert [o["trace"]["hits"] for o in out] == [["2", "1"], ["2"]]
    assert all(o["trace"]["n_retrievals"] == 0 for o in out)
    gold = [Hit("2", "Velmora", "Velmora is a town.", 1.0), Hit("1", "Esk", "Esk flows through Velmora.", 1.0)]
    full = n_tokens(m.tokenizer, render(m.tokenizer, knowledge_messages(rows[0]["question"],
                                                                        format_passages(gold, "numbered"))))
    closed = n_tokens(m.tokenizer, render(m.tokenizer, general_messages(rows[0]["question"])))
    assert out[0]["trace"]["prompt_tokens"] == full and out[0]["trace"]["added_prompt_tokens"] == full - closed
    assert [o["prediction"] for o in out] == [m.answer([r])[0]["prediction"] for r in rows]  # order kept
    with pytest.raises(UserError, match="has no supporting_pids"):
        m.answer([{"id": "c", "question": "?"}])
    with pytest.raises(UserError, match="names passages absent from .*: 9"):
        m.answer([{"id": "d", "question": "?", "supporting_pids": ["1", "9"]}])


def test_rag_bad_options(world, tiny_model_dir, tmp_path):
    rows, index = world
    with pytest.raises(UserError, match="contradicts the name"):
        build_method("rag_k2", {"model": str(tiny_model_dir), "index": str(index), "k": 3}, CTX)
    with pytest.raises(UserError, match="index directory not found"):
        build_method("rag_k2", {"model": str(tiny_model_dir), "index": str(tmp_path / "none")}, CTX)
    with pytest.raises(UserError, match="passage_format") as e:
        build_method("rag_k1", {"model": str(tiny_model_dir), "index": str(index), "passage_format": "fancy"}, CTX)
    assert "\n" not in str(e.value)


def test_grip_predicts_step_answers_and_counts_rounds(world, tiny_model_dir):
    rows, index = world
    m = build_method("grip", {"model": str(tiny_model_dir), "index": str(index), "max_new_tokens": 8,
                              "max_rounds": 3}, CTX)
    out = m.answer(rows)
    assert len(out) == len(rows)
    closed = [n_tokens(m.tokenizer, render(m.tokenizer, general_messages(r["question"]))) for r in rows]
    for o, c in zip(out, closed):
        t = o["trace"]
        assert isinstance(o["prediction"], list) and o["prediction"]  # step answers, the final one last
        assert len(o["prediction"]) == t["n_retrievals"] + 1
        assert 1 <= t["rounds"] <= 3 and t["n_retrievals"] <= 2 and len(t["queries"]) == t["n_retrievals"]
        # every round's prompt is counted: at least the closed-book-sized question prompt per round
        assert t["prompt_tokens"] >= t["rounds"] * (c - 5) and t["added_prompt_tokens"] == t["prompt_tokens"] - c
    # a fresh count per call, same answers one at a time (batching changes nothing)
    solo = [m.answer([r])[0] for r in rows]
    assert [s["prediction"] for s in solo] == [o["prediction"] for o in out]
    assert [s["trace"]["prompt_tokens"] for s in solo] == [o["trace"]["prompt_tokens"] for o in out]


def test_grip_refuses_a_model_without_control_tokens(world, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from kinject.models import TinySpec, make_tiny_model, save_model

    rows, index = world
    raw = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<unk>", eos_token="<unk>")
    model = make_tiny_model(TinySpec(vocab=8, hidden=16, layers=1, heads=2), tokenizer=None)
    save_model(model, tok, tmp_path / "plain")
    with pytest.raises(UserError, match="not trained for GRIP"):
        build_method("grip", {"model": str(tmp_path / "plain"), "index": str(index)}, CTX)


def test_rag_domain_rows_retrieve_from_their_own_index(world, tiny_model_dir, tmp_path):
    from kinject.retrieval.index import build_index

    rows, index = world
    own = tmp_path / "own.jsonl"
    own.write_text(json.dumps({"id": "priv-1", "title": "Ferovia-7",
                               "text": "Ferovia-7 reaches a Faradaic efficiency of 93.5 percent."}) + "\n")
    build_index(own, tmp_path / "own_index", "tantivy", progress=False)
    m = build_method("rag_k1", {"model": str(tiny_model_dir), "index": str(index),
                                "domain_indexes": {"materials": str(tmp_path / "own_index")}}, CTX)
    private_q = {"id": "p1", "question": "What Faradaic efficiency does Ferovia-7 reach?", "domain": "materials"}
    mixed = [rows[0], private_q, {**rows[2], "domain": "general"}]
    out = m.answer(mixed)
    assert out[1]["trace"]["hits"] == ["priv-1"]  # its domain's corpus
    assert out[0]["trace"]["hits"] != ["priv-1"] and out[2]["trace"]["hits"] != ["priv-1"]
    assert [o["prediction"] for o in out] == [m.answer([r])[0]["prediction"] for r in mixed]  # order kept
    only_private = build_method("rag_k1", {"model": str(tiny_model_dir),
                                           "domain_indexes": {"materials": str(tmp_path / "own_index")}}, CTX)
    with pytest.raises(UserError, match="domain 'general' have no index"):
        only_private.answer([mixed[2]])
    with pytest.raises(UserError, match="give options.index"):
        build_method("rag_k1", {"model": str(tiny_model_dir)}, CTX)
