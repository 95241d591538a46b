"""GRIP on the tiny world end to end: world build -> tantivy index -> pattern A-D synthesis ->
a short SFT -> agent eval. With the shipped foundation base (assets/foundation/tiny/base) every
class must appear (A needs a base that knows popular facts); without it a tiny random model
checks the same path (no A: it knows nothing)."""

import json
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "assets/foundation/tiny/base"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world_and_index(tmp_path_factory):
    from kinject.retrieval.index import build_index
    from kinject.world.build import build_world

    tmp = tmp_path_factory.mktemp("gripw")
    world = build_world(REPO / "configs/world/tiny.yaml", tmp / "world")
    build_index(world / "wiki/passages.tsv", tmp / "index", "tantivy", progress=False)
    return world, tmp / "index"


def test_grip_pipeline_on_tiny_world(world_and_index, tiny_model_dir, tmp_path):
    from kinject.config import load_config
    from kinject.grip.config import GripEvalConfig, GripSftConfig, GripSynthConfig
    from kinject.grip.evaluate import grip_eval
    from kinject.grip.sft import train_sft
    from kinject.grip.synth import synthesize

    world, index = world_and_index
    base = BASE if (BASE / "config.json").is_file() else tiny_model_dir
    cfg = load_config(REPO / "configs/grip/synth_tiny.yaml", [
        f"questions=[{world / 'wiki/qa_train.jsonl'}]", f"model={base}", f"index={index}",
        f"out={tmp_path / 'synth'}", "limit=120", "max_new_tokens=8"], expect=GripSynthConfig)
    m = synthesize(cfg)
    classes = {c: v["total"] for c, v in m["classes"].items()}
    rows = [json.loads(x) for x in (tmp_path / "synth/sft.jsonl").read_text().splitlines()]
    assert Counter(r["class"] for r in rows) == Counter({c: m["classes"][c]["sft"] for c in classes if classes[c]})
    # the world's 2-hop questions get the C turn (first hop stated, second sub-question asked)
    # and, after it, a D turn whose passages hold the final answer
    assert classes["C"] > 0 and all(r["hops"] == 2 for r in rows if r["class"] == "C")
    assert any(r["note"] == "after_C" for r in rows) and classes["D"] > 0 and classes["B"] > 0
    if base == BASE:
        assert min(classes.values()) > 0, classes

    sft = load_config(REPO / "configs/grip/sft_tiny.yaml", [
        f"model={base}", f"data={tmp_path / 'synth/sft.jsonl'}", f"out={tmp_path / 'model'}", "max_steps=4",
        "batch_size=8"], expect=GripSftConfig)
    model = train_sft(sft)
    ev = load_config(REPO / "configs/grip/eval_tiny.yaml", [
        f"model={model}", f"index={index}", "base_model=null", "limit=12", "agent.max_new_tokens=16"],
        expect=GripEvalConfig)
    res = grip_eval(ev, world / "wiki/qa_test.jsonl", tmp_path / "eval")
    datasets = {r.dataset for r in res}
    assert datasets == {"wiki", "wiki_popular", "wiki_longtail", "wiki_2hop"}
    preds = [json.loads(x) for x in (tmp_path / "eval/predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 12 and all(1 <= len(p["steps"]) <= 4 and p["n_retrievals"] <= 3 for p in preds)
