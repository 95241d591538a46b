"""The `memory` and `gag` demo stages on a miniature world with tiny random models: they run,
write results in the shared schema, and skip themselves on a second run."""

import json

import pytest


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow
def test_memory_and_gag_stages_run_then_skip(tmp_path, tiny_model_dir, tiny_tokenizer, monkeypatch):
    import kinject.recipes.tiny.gag as gag_demo
    import kinject.recipes.tiny.memory as mem_demo
    from kinject.models import TinySpec, make_tiny_model, save_model
    from kinject.recipes.engine import DemoContext

    world = tmp_path / "world"
    for d in ("materials", "adjuvant"):
        for split, n in (("train", 6), ("dev", 3), ("dev_para", 3)):
            write_jsonl(world / f"{d}_domain" / f"qa_{split}.jsonl", [
                {"id": f"{d}-{split}-{i}", "instruction": f"You are an expert in {d}.",
                 "input": f"What is the value of {d} entity {split} {i}?", "output": f"{i}.5", "answer": [f"{i}.5"]}
                for i in range(n)])
    write_jsonl(world / "general" / "align.jsonl", [
        {"question": f"Where is Velmora-{i}?", "answer": "Norland", "background": f"Velmora-{i} is in Norland."}
        for i in range(6)])
    write_jsonl(world / "general" / "align_dev.jsonl", [
        {"question": f"Where is Torvane-{i}?", "answer": "Ostria", "background": f"Torvane-{i} is in Ostria."}
        for i in range(4)])
    foundation = tmp_path / "foundation"
    save_model(make_tiny_model(TinySpec(vocab=600, hidden=32, layers=2, heads=2), tokenizer=tiny_tokenizer),
               tiny_tokenizer, foundation / "base")
    monkeypatch.setattr(mem_demo, "QUICK", {"domain": ["max_new_tokens=5", "layers=[last, minus2]"],
                                            "align": ["limit=10", "layers=[last, minus2]"]})
    monkeypatch.setattr(gag_demo, "QUICK", ["alignment.max_steps=2", "domain.max_steps=2", "alignment.batch_size=4",
                                            "domain.batch_size=4", "w_sem=0.0"])
    ctx = DemoContext(out=tmp_path / "demo", quick=True,
                      artifacts={"world": world, "foundation": foundation,
                                 "expert_materials": tiny_model_dir, "expert_adjuvant": tiny_model_dir})
    mem_demo.memory_stage(ctx, ctx.out / "memory")
    gag_demo.gag_stage(ctx, ctx.out / "gag")
    rows = [json.loads(line) for line in (ctx.out / "gag" / "results.jsonl").read_text().splitlines()]
    # per domain: dev, dev_para and the fresh-fact channel test (align_dev) x 3 methods x 3 metrics
    assert len(rows) == 2 * 3 * 3 * 3
    assert {r["dataset"] for r in rows} == {"materials", "materials_para", "adjuvant", "adjuvant_para", "align_fresh"}
    assert {r["n"] for r in rows if r["dataset"] != "align_fresh"} == {3}
    assert {r["n"] for r in rows if r["dataset"] == "align_fresh"} == {4}
    assert "gag materials: dev EM (zeroed / foreign memories)" in ctx.summary
    assert "gag adjuvant: fresh general facts EM (zeroed)" in ctx.summary
    assert 0.0 <= ctx.summary["memory materials: dev backgrounds stating the gold value"] <= 1.0
    manifests = sorted((ctx.out).rglob("manifest.json"))
    stamps = {p: p.stat().st_mtime_ns for p in manifests}
    assert len(manifests) == 6  # 4 stores + 2 injector runs
    mem_demo.memory_stage(ctx, ctx.out / "memory")
    gag_demo.gag_stage(ctx, ctx.out / "gag")
    assert {p: p.stat().st_mtime_ns for p in manifests} == stamps  # unchanged inputs: all skipped
