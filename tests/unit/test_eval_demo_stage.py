"""The `eval` demo stage on a hand-made world layout (the world stage's file names)."""

import json

import pytest

from kinject.errors import UserError
from kinject.recipes.engine import DemoContext
from kinject.recipes.tiny.eval import eval_stage


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_eval_stage_runs_base_on_world_layout(tmp_path, tiny_model_dir):
    world = tmp_path / "world"
    for dom in ("materials", "adjuvant"):
        write_jsonl(world / f"{dom}_domain" / "qa_dev.jsonl",
                    [{"id": f"{dom}-{i}", "domain": dom, "input": f"What is X-{i}?", "output": "7", "answer": ["7"]}
                     for i in range(3)])
    write_jsonl(world / "general" / "qa_test.jsonl", [{"question": "Capital of Norland?", "answer": ["Velmora"]}])
    write_jsonl(world / "wiki" / "qa_test.jsonl",
                [{"question": f"Q{i}?", "answer": ["A"], "hops": 1 + i % 2} for i in range(4)])
    foundation = tmp_path / "foundation"
    foundation.mkdir()
    (foundation / "base").symlink_to(tiny_model_dir, target_is_directory=True)
    ctx = DemoContext(out=tmp_path / "demo", quick=True, artifacts={"world": world, "foundation": foundation})
    eval_stage(ctx, tmp_path / "demo" / "eval")
    out = tmp_path / "demo" / "eval"
    assert ctx.artifacts["eval"] == out and (out / "report.md").is_file()
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {r["dataset"] for r in rows} == {"materials", "adjuvant", "general", "wiki_1hop", "wiki_2hop"}
    assert {r["method"] for r in rows} == {"base"}
    assert next(r for r in rows if r["dataset"] == "wiki_2hop" and r["metric"] == "has_answer")["n"] == 2
    assert ctx.summary["eval: methods x datasets"].startswith("1 x 5")


def test_eval_stage_says_what_is_missing(tmp_path):
    with pytest.raises(UserError, match="needs the world"):
        eval_stage(DemoContext(out=tmp_path, quick=True), tmp_path / "eval")
    ctx = DemoContext(out=tmp_path, quick=True, artifacts={"world": tmp_path, "foundation": tmp_path / "nope"})
    with pytest.raises(UserError, match="kinject world pretrain"):
        eval_stage(ctx, tmp_path / "eval")
