"""Demo stage `retrieval` (order 30): a tantivy index over the world's wiki passages, recall@k
of the gold passage for 1-hop wiki test questions, and the RAG baseline with the shipped base
model (`<foundation>/base`) when it is there. Skips itself when the world is not built."""

from __future__ import annotations

from pathlib import Path

from kinject.demo import DemoContext, stage


@stage("retrieval", order=30, help="tantivy index over the world's wiki passages; recall@k and RAG k=1,3,5")
def retrieval_stage(ctx: DemoContext, out: Path) -> None:
    from kinject.io import write_json_atomic
    from kinject.retrieval.base import META_FILE, read_meta
    from kinject.retrieval.config import RagEvalConfig
    from kinject.retrieval.index import build_index
    from kinject.retrieval.rag import rag_eval
    from kinject.runs import inputs_hash

    world = ctx.artifacts.get("world")
    if world is None or not (Path(world) / "wiki/passages.tsv").is_file():
        ctx.summary["retrieval: skipped (no world wiki passages)"] = 0
        return
    passages, questions = Path(world) / "wiki/passages.tsv", Path(world) / "wiki/qa_test.jsonl"
    index = out / "wiki_index"
    h = inputs_hash({"backend": "tantivy"}, passages)
    if not ((index / META_FILE).is_file() and read_meta(index).get("inputs_hash") == h):
        build_index(passages, index, "tantivy", progress=False)
        meta = read_meta(index)
        meta["inputs_hash"] = h
        write_json_atomic(index / META_FILE, meta)
    ctx.artifacts["wiki_index"] = index
    base = Path(ctx.artifacts.get("foundation", "")) / "base"
    if not (base / "config.json").is_file():
        ctx.summary["retrieval: index built (no base model for RAG)"] = str(index)
        return
    cfg = RagEvalConfig(questions=str(questions), index=str(index), model=str(base), where={"hops": 1},
                        dataset="wiki", limit=100 if ctx.quick else None, device="cpu")
    rows = rag_eval(cfg, out / "rag")
    for r in rows:
        if r["metric"] in ("recall@3", "em"):
            ctx.summary[f"retrieval: {r['method']} {r['metric']} (wiki 1-hop test)"] = round(r["value"], 3)
