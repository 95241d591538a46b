"""RAG baseline mechanics with a tiny random model: prompt contents, k passages, batching,
and `rag eval` output (results.jsonl rows per k and metric)."""

import json
from pathlib import Path

import pytest

from kinject.config import load_config
from kinject.models import load_causal_lm
from kinject.prompts import KNOWLEDGE_REQUEST
from kinject.retrieval.base import Hit, open_index
from kinject.retrieval.config import RagEvalConfig
from kinject.retrieval.index import build_index
from kinject.retrieval.rag import format_passages, rag_answer, rag_eval, rag_messages, recall_at_k

REPO = Path(__file__).resolve().parents[2]
PASSAGES = [
    {"id": "p1", "title": "Zorvanite", "text": "The Zorvanite catalyst melts at 1450 kelvin."},
    {"id": "p2", "title": "Quellium", "text": "The Quellium catalyst reaches 93 percent selectivity."},
    {"id": "p3", "title": "Brastine", "text": "The Brastine catalyst was found in Norland."},
    {"id": "p4", "title": "", "text": "Untitled note about Norland catalysts."},
]
QUESTIONS = [
    {"question": "At what temperature does the Zorvanite catalyst melt?", "answer": ["1450 kelvin", "1450"],
     "gold_passage_ids": ["p1"], "hops": 1},
    {"question": "Where was the Brastine catalyst found?", "answer": "Norland", "gold_passage_ids": ["p3"], "hops": 1},
    {"question": "What selectivity does the Quellium catalyst reach?", "answer": ["93 percent"],
     "gold_passage_ids": ["p2", "p9"], "hops": 2},
]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rag")
    src = tmp / "p.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in PASSAGES))
    build_index(src, tmp / "idx", progress=False)
    return tmp / "idx"


def test_format_passages_once():
    hits = [Hit("a", "T1", "first  passage\ntext", 2.0), Hit("b", "", "second", 1.0)]
    assert format_passages(hits) == "[1] T1: first passage text\n[2] second"
    assert format_passages(hits, "plain") == "first passage text second"
    msg = rag_messages("Q?", hits, instruction="Be brief.")[0]["content"]
    assert msg.startswith("Be brief.\n" + KNOWLEDGE_REQUEST) and "Question: Q?\nKnowledge: [1] T1: first" in msg


def test_prompts_hold_k_passages_and_batching_matches_single(tiny_model_dir, index):
    model, tok = load_causal_lm(tiny_model_dir, device="cpu")
    qs = [q["question"] for q in QUESTIONS]
    with open_index(index) as r:
        outs = rag_answer(model, tok, r, qs, k=2, max_new_tokens=8, style="numbered", batch_size=3)
        single = [rag_answer(model, tok, r, [q], k=2, max_new_tokens=8, style="numbered", batch_size=1)[0] for q in qs]
        top1 = rag_answer(model, tok, r, qs, k=1, max_new_tokens=8, style="numbered")
    assert len(outs) == 3
    for o, q in zip(outs, qs):
        assert len(o.hits) == 2 and f"Question: {q}" in o.prompt
        assert "[1] " in o.prompt and "[2] " in o.prompt and "[3] " not in o.prompt
        assert o.hits[0].text in o.prompt and o.hits[1].text in o.prompt
        assert 0 < o.n_new_tokens <= 8
    assert outs[0].hits[0].id == "p1" and outs[1].hits[0].id == "p3"
    assert [o.answer for o in outs] == [s.answer for s in single]
    assert [o.prompt for o in outs] == [s.prompt for s in single]
    assert all(len(o.hits) == 1 and "[2] " not in o.prompt for o in top1)
    assert all(a.n_prompt_tokens < b.n_prompt_tokens for a, b in zip(top1, outs))


def test_rag_eval_writes_results(tmp_path, tiny_model_dir, index):
    qfile = tmp_path / "qa_test.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    cfg = load_config(REPO / "configs/retrieval/rag_eval.yaml", [
        f"questions={qfile}", f"index={index}", f"model={tiny_model_dir}", "ks=[1,2]", "max_new_tokens=6",
        "device=cpu"], expect=RagEvalConfig)
    rows = [r.model_dump() for r in rag_eval(cfg, tmp_path / "out")]
    lines = [json.loads(x) for x in (tmp_path / "out/results.jsonl").read_text().splitlines()]
    assert lines == rows
    assert {(r["method"], r["metric"]) for r in rows} == {
        (f"rag_k{k}", m) for k in (1, 2) for m in ("em", "f1", "has_answer", "added_prompt_tokens")} | {
        ("retrieval_tantivy", "recall@1"), ("retrieval_tantivy", "recall@2")}
    recall = {r["metric"]: r["value"] for r in rows if r["method"] == "retrieval_tantivy"}
    assert recall["recall@1"] == pytest.approx((1 + 1 + 0.5) / 3)  # p9 is not in the index
    for r in rows:
        assert set(r) == {"method", "dataset", "split", "metric", "value", "n"}
        assert r["dataset"] == "qa_test" and r["split"] == "test" and r["n"] == 3
        if r["metric"] != "added_prompt_tokens":
            assert 0.0 <= r["value"] <= 1.0
    added = {r["method"]: r["value"] for r in rows if r["metric"] == "added_prompt_tokens"}
    assert 0 < added["rag_k1"] < added["rag_k2"]
    preds = [json.loads(x) for x in (tmp_path / "out/predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and preds[0]["hits"] == ["p1"]
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["status"] == "complete" and "rag_k1/em" in manifest["metrics"]
    # unchanged inputs: the second run reuses the results
    mtime = (tmp_path / "out/results.jsonl").stat().st_mtime_ns
    assert [r.model_dump() for r in rag_eval(cfg, tmp_path / "out")] == rows
    assert (tmp_path / "out/results.jsonl").stat().st_mtime_ns == mtime
    # filters: 1-hop questions only
    cfg1 = cfg.model_copy(update={"where": {"hops": 1}, "ks": [1]})
    rows1 = rag_eval(cfg1, tmp_path / "out1")
    assert {r.n for r in rows1} == {2}
    assert [r.value for r in rows1 if r.metric == "recall@1"] == [1.0]


def test_recall_at_k_counts_chunks_for_their_document():
    hits = [Hit("d1#2", "", "", 1.0), Hit("x", "", "", 0.5)]
    assert recall_at_k(hits, ["d1"], 1) == 1.0 and recall_at_k(hits, ["x"], 1) == 0.0
    assert recall_at_k(hits, ["x", "d1"], 2) == 1.0


def test_demo_stage_on_a_small_world(tmp_path, tiny_model_dir):
    from kinject.recipes.engine import DemoContext
    from kinject.recipes.tiny.retrieval import retrieval_stage

    world, foundation = tmp_path / "world", tmp_path / "foundation"
    (world / "wiki").mkdir(parents=True)
    foundation.mkdir()
    (foundation / "base").symlink_to(tiny_model_dir)
    (world / "wiki/passages.tsv").write_text(
        "id\ttext\ttitle\n" + "".join(f"{p['id']}\t{p['text']}\t{p['title']}\n" for p in PASSAGES))
    (world / "wiki/qa_test.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    ctx = DemoContext(out=tmp_path / "demo", quick=True, artifacts={"world": world, "foundation": foundation})
    retrieval_stage(ctx, tmp_path / "demo/retrieval")
    assert ctx.artifacts["wiki_index"] == tmp_path / "demo/retrieval/wiki_index"
    assert ctx.summary["retrieval: retrieval_tantivy recall@3 (wiki 1-hop test)"] == 1.0
    assert "retrieval: rag_k3 em (wiki 1-hop test)" in ctx.summary
    empty = DemoContext(out=tmp_path / "d2", quick=True)
    retrieval_stage(empty, tmp_path / "d2/retrieval")
    assert "wiki_index" not in empty.artifacts
