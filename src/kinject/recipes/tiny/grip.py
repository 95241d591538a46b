"""Demo stage `grip` (order 80): on the tiny world, synthesize pattern A-D turns with the
foundation base, fine-tune it into a GRIP model, and evaluate the agent against the closed-book
base and RAG k=3 on wiki/qa_test (each step skips itself when complete with the same inputs)."""

from __future__ import annotations

from pathlib import Path

from kinject.eval.results import ResultRow
from kinject.recipes.engine import DemoContext, stage
from kinject.resources import shipped

CONFIGS = shipped("configs/grip")


def _value(rows: list[ResultRow], method: str, dataset: str, metric: str) -> float | None:
    return next((round(r.value, 3) for r in rows if (r.method, r.dataset, r.metric) == (method, dataset, metric)), None)


@stage("grip", order=80, help="GRIP: pattern A-D synthesis, SFT, agent eval vs base and RAG k=3", lane="side")
def grip_stage(ctx: DemoContext, out: Path) -> None:
    from kinject.config import load_config
    from kinject.grip.config import GripEvalConfig, GripSftConfig, GripSynthConfig
    from kinject.grip.evaluate import grip_eval
    from kinject.grip.sft import train_sft
    from kinject.grip.synth import synthesize

    world = Path(ctx.artifacts.get("world", out / "missing-world"))
    base = Path(ctx.artifacts.get("foundation", shipped("assets/foundation/tiny"))) / "base"
    if not (base / "config.json").is_file() or not (world / "wiki").is_dir():
        ctx.summary["grip"] = f"skipped: needs the world stage and a foundation base at {base}"
        return
    index = Path(ctx.artifacts.get("wiki_index", out / "wiki_index"))
    if "wiki_index" not in ctx.artifacts and not (index / "kinject-index.json").is_file():
        from kinject.retrieval.index import build_index

        build_index(world / "wiki/passages.tsv", index, "tantivy", progress=False)
    quick = ctx.quick
    synth = load_config(CONFIGS / "synth_tiny.yaml", [
        f"questions=[{world / 'wiki/qa_train.jsonl'}]", f"model={base}", f"index={index}", f"out={out / 'synth'}",
        *(["limit=300"] if quick else [])], expect=GripSynthConfig)
    counts = synthesize(synth)["classes"]
    sft = load_config(CONFIGS / "sft_tiny.yaml", [
        f"model={base}", f"data={out / 'synth/sft.jsonl'}", f"out={out / 'model'}",
        *(["max_steps=60"] if quick else [])], expect=GripSftConfig)
    model = train_sft(sft)
    ev = load_config(CONFIGS / "eval_tiny.yaml", [
        f"model={model}", f"index={index}", f"base_model={base}", *(["limit=60"] if quick else [])],
        expect=GripEvalConfig)
    rows = grip_eval(ev, world / "wiki/qa_test.jsonl", out / "eval")
    ctx.artifacts["grip_model"] = model
    ctx.summary["grip: synth rows per class (sft)"] = {c: v["sft"] for c, v in counts.items()}
    for method in ("grip", "rag_k3", "base"):
        ctx.summary[f"grip: {method} EM wiki / 2hop"] = (_value(rows, method, "wiki", "em"),
                                                          _value(rows, method, "wiki_2hop", "em"))
    ctx.summary["grip: avg retrievals popular / longtail / 2hop"] = tuple(
        _value(rows, "grip", f"wiki_{s}", "avg_retrievals") for s in ("popular", "longtail", "2hop"))
