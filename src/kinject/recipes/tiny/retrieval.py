"""Demo stage `retrieval` (order 30): a tantivy index over the world's wiki passages, recall@k
of the gold passage for 1-hop wiki test questions, and the RAG baseline with the shipped base
model (`<foundation>/base`) when it is there; plus a tantivy index over the private domains'
own knowledge bases (32-word windows: the corpus the RAG baseline of the private domains
retrieves from, `ctx.artifacts["private_index"]`). Skips itself when the world is not built."""

from __future__ import annotations

from pathlib import Path

from kinject.recipes.engine import DemoContext, stage

PRIVATE = ("materials", "adjuvant")
CHUNK = (32, 8)  # words per window, overlap: a few facts per passage


def _stale(index: Path, spec: dict, sources: list[Path]) -> bool:
    from kinject.retrieval.base import META_FILE, read_meta
    from kinject.runs import inputs_hash

    return not ((index / META_FILE).is_file() and read_meta(index).get("inputs_hash") == inputs_hash(spec, *sources))


def _build_once(passages: Path, index: Path, spec: dict, sources: list[Path]) -> None:
    """A tantivy index of `passages`, rebuilt only when `spec` or the source files changed."""
    from kinject.io import write_json_atomic
    from kinject.retrieval.base import META_FILE, read_meta
    from kinject.retrieval.index import build_index
    from kinject.runs import inputs_hash

    if _stale(index, spec, sources):
        build_index(passages, index, "tantivy", progress=False)
        meta = read_meta(index)
        meta["inputs_hash"] = inputs_hash(spec, *sources)
        write_json_atomic(index / META_FILE, meta)


@stage("retrieval", order=30, help="tantivy indexes: the world's wiki (recall@k, RAG k=1,3,5) and the private corpora")
def retrieval_stage(ctx: DemoContext, out: Path) -> None:
    from kinject.retrieval.config import RagEvalConfig
    from kinject.retrieval.rag import rag_eval

    world = ctx.artifacts.get("world")
    if world is None or not (Path(world) / "wiki/passages.tsv").is_file():
        ctx.summary["retrieval: skipped (no world wiki passages)"] = 0
        return
    passages, questions = Path(world) / "wiki/passages.tsv", Path(world) / "wiki/qa_test.jsonl"
    index = out / "wiki_index"
    _build_once(passages, index, {"backend": "tantivy"}, [passages])
    ctx.artifacts["wiki_index"] = index
    kbs = [Path(world) / f"{d}_domain" / "knowledge_base.jsonl" for d in PRIVATE]
    if all(f.is_file() for f in kbs):
        from kinject.io import write_jsonl_atomic
        from kinject.world.private import knowledge_passages

        private = out / "private_index"
        corpus = out / "private_passages.jsonl"
        if _stale(private, {"backend": "tantivy", "chunk": list(CHUNK)}, kbs):
            write_jsonl_atomic(corpus, knowledge_passages(world, PRIVATE, *CHUNK))
        _build_once(corpus, private, {"backend": "tantivy", "chunk": list(CHUNK)}, kbs)
        ctx.artifacts["private_index"] = private
    base = Path(ctx.artifacts.get("foundation", "")) / "base"
    if not (base / "config.json").is_file():
        ctx.summary["retrieval: index built (no base model for RAG)"] = str(index)
        return
    cfg = RagEvalConfig(questions=str(questions), index=str(index), model=str(base), where={"hops": 1},
                        dataset="wiki", limit=100 if ctx.quick else None, device="cpu")
    rows = rag_eval(cfg, out / "rag")
    for r in rows:
        if r.metric in ("recall@3", "em"):
            ctx.summary[f"retrieval: {r.method} {r.metric} (wiki 1-hop test)"] = round(r.value, 3)
