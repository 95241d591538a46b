"""CLI: `kinject index build|add|delete|info`, `kinject search`, `kinject rag eval`,
`kinject bench retrieval`. Thin: parse arguments, call the library, print JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kinject.cliargs import Overrides
from kinject.errors import UserError

index_app = typer.Typer(help="Build and update passage indexes (tantivy default, elasticsearch, dense, hybrid).",
                        no_args_is_help=True)
rag_app = typer.Typer(help="RAG baseline: top-k passages in the base model's prompt.", no_args_is_help=True)
from kinject.benchcli import bench_app  # noqa: E402  (the shared `kinject bench` group)

IndexOpt = Annotated[Path, typer.Option("--index", help="index directory")]
BackendOpt = Annotated[str | None, typer.Option("--backend", help="expected backend (checked against the index)")]
SkipBad = Annotated[bool, typer.Option("--skip-bad", help="skip malformed lines instead of stopping")]


def _echo(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def _parse_opts(opts: list[str] | None) -> dict:
    from kinject.config import apply_overrides

    return apply_overrides({}, opts or [])


@index_app.command("build")
def index_build(
    input: Annotated[Path, typer.Option("--input", help="passages: DPR .tsv (id, text, title) or .jsonl {id, title, text}")],
    out: Annotated[Path, typer.Option("--out", help="index directory to create")],
    backend: Annotated[str, typer.Option("--backend", help="tantivy | elasticsearch | dense | hybrid")] = "tantivy",
    chunk_words: Annotated[int | None, typer.Option("--chunk-words", help="cut documents into windows of N words")] = None,
    chunk_overlap: Annotated[int, typer.Option("--chunk-overlap", help="words shared by consecutive windows")] = 0,
    opt: Annotated[list[str] | None, typer.Option("--opt", help="backend option key=value (repeatable), e.g. ivf_nlist=256")] = None,
    skip_bad: SkipBad = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
) -> None:
    """Build an index from a passage file (in a temporary dir, renamed into place when complete)."""
    from kinject.retrieval.index import build_index

    rep = build_index(input, out, backend, chunk_words, chunk_overlap, _parse_opts(opt), skip_bad, not quiet)
    _echo(rep.to_dict())


@index_app.command("add")
def index_add(index: IndexOpt, input: Annotated[Path, typer.Option("--input", help="passages to add (.tsv/.jsonl)")],
              skip_bad: SkipBad = False, backend: BackendOpt = None,
              quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False) -> None:
    """Add (or replace, by id) passages in an existing index, chunked as the index was built."""
    from kinject.retrieval.index import add_to_index

    _echo(add_to_index(index, input, skip_bad, backend, not quiet).to_dict())


@index_app.command("delete")
def index_delete(index: IndexOpt, ids: Annotated[Path, typer.Option("--ids", help="file with one id per line")],
                 backend: BackendOpt = None) -> None:
    """Delete passages by id (a document id also deletes all of its chunks)."""
    from kinject.retrieval.index import delete_from_index

    _echo(delete_from_index(index, ids, backend).to_dict())


@index_app.command("info")
def index_info(index: IndexOpt) -> None:
    """Backend, options, chunking and passage count of an index."""
    from kinject.retrieval.base import open_index, read_meta

    meta = read_meta(index)
    with open_index(index) as r:
        meta["count"] = r.count()
    _echo(meta)


def _read_queries(path: Path) -> list[str]:
    from kinject.io import iter_jsonl, require_file

    p = require_file(path, "queries file")
    if p.suffix in (".jsonl", ".json"):
        out = []
        for i, row in enumerate(iter_jsonl(p), 1):
            q = row.get("question", row.get("query"))
            if not isinstance(q, str) or not q.strip():
                raise UserError(f"{p}: record {i} has no non-empty 'question' (or 'query') field")
            out.append(q)
    else:
        out = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not out:
        raise UserError(f"{p}: no queries")
    return out


def search(
    index: IndexOpt,
    query: Annotated[str | None, typer.Argument(help="the query (or use --queries FILE)")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="hits per query")] = 10,
    queries: Annotated[Path | None, typer.Option("--queries", help="JSONL with 'question' or one query per line")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="JSONL output for --queries: {question, hits}")] = None,
    backend: BackendOpt = None,
    threads: Annotated[int | None, typer.Option("--threads", help="search threads for --queries")] = None,
) -> None:
    """Search an index: one query -> JSON hits; --queries FILE --out FILE -> JSONL of {question, hits}."""
    from kinject.io import write_jsonl_atomic
    from kinject.retrieval.base import check_k, open_index

    if (query is None) == (queries is None):
        raise UserError('give either a query ("...") or --queries FILE, not both')
    if queries is not None and out is None:
        raise UserError("--queries needs --out FILE for the JSONL results")
    check_k(k)
    with open_index(index, backend) as r:
        if query is not None:
            _echo([h.to_dict() for h in r.search(query, k)])
            return
        qs = _read_queries(queries)
        hits = r.batch_search(qs, k, threads)
    write_jsonl_atomic(out, ({"question": q, "hits": [h.to_dict() for h in hs]} for q, hs in zip(qs, hits)))
    typer.echo(f"wrote {len(qs)} results to {out}", err=True)


@rag_app.command("eval")
def rag_eval_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config (kind: rag_eval)")],
    out: Annotated[Path, typer.Option("--out", help="output directory")],
    overrides: Overrides = None,
) -> None:
    """Evaluate the RAG baseline (methods rag_k{K}); writes results.jsonl, predictions.jsonl, manifest."""
    from kinject.config import load_config
    from kinject.eval.results import print_results
    from kinject.retrieval.config import RagEvalConfig
    from kinject.retrieval.rag import rag_eval

    cfg = load_config(config, overrides or [], expect=RagEvalConfig)
    print_results(rag_eval(cfg, out))


@bench_app.command("retrieval")
def bench_retrieval(
    out: Annotated[Path, typer.Option("--out", help="output directory (bench.json)")],
    sizes: Annotated[str, typer.Option("--sizes", help="comma-separated corpus sizes")] = "100000",
    backends: Annotated[str | None, typer.Option("--backends", help="comma-separated (default: tantivy,dense,bm25s; with --questions also hybrid)")] = None,
    dense_max: Annotated[int, typer.Option("--dense-max", help="subsample the dense corpus to at most N passages")] = 20000,
    queries: Annotated[int, typer.Option("--queries", help="number of queries")] = 1000,
    words: Annotated[int, typer.Option("--words", help="words per passage")] = 100,
    threads: Annotated[int, typer.Option("--threads", help="threads for batched search / indexing")] = 2,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    questions: Annotated[Path | None, typer.Option("--questions", help="a real corpus instead: questions JSONL with supporting_pids (data/realqa schema)")] = None,
    passages: Annotated[Path | None, typer.Option("--passages", help="with --questions: the passages TSV the gold ids point into")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="with --questions: the first N questions only")] = None,
    dense_opt: Annotated[list[str] | None, typer.Option("--dense-opt", help="with --questions: dense backend option key=value, e.g. device=cuda")] = None,
) -> None:
    """Synthetic corpus: build docs/s, single-thread and batched queries/s, index size. With --questions and
    --passages: recall@{1,3,5,10} of the gold passages (any, all), MRR@10 and queries/s per backend
    (tantivy, dense, hybrid; bm25s the reference), bench.json + bench.md."""
    from kinject.retrieval.bench import run_bench

    if (questions is None) != (passages is None):
        raise UserError("--questions and --passages go together (a real corpus and its questions)")
    if questions is not None:
        from kinject.realqa.cli import dataset_name, dense_options_from
        from kinject.realqa.data import load_qa_set
        from kinject.retrieval.bench import run_corpus_bench

        dense_options = dense_options_from(dense_opt)
        qa = load_qa_set(questions, passages)
        items = qa.questions[:limit] if limit else qa.questions
        names = (backends or "tantivy,dense,hybrid,bm25s").split(",")
        rep = run_corpus_bench(out, qa.passages, [q.question for q in items], [q.gold for q in items],
                               [q.type for q in items], [b.strip() for b in names if b.strip()], threads=threads,
                               name=dataset_name(questions), qids=[q.id for q in items], dense_options=dense_options)
        typer.echo((out / "bench.md").read_text(encoding="utf-8"))
        _echo({"out": str(out / "bench.json"), "backends": [r["backend"] for r in rep["results"]]})
        return

    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--sizes must be comma-separated integers, got {sizes!r}") from None
    if not size_list or any(s <= 0 for s in size_list):
        raise UserError(f"--sizes must be positive integers, got {sizes!r}")
    names = (backends or "tantivy,dense,bm25s").split(",")
    res = run_bench(out, size_list, [b.strip() for b in names if b.strip()], dense_max=dense_max,
                    n_queries=queries, words=words, threads=threads, seed=seed)
    _echo(res["results"])


@bench_app.command("fusion")
def bench_fusion(
    runs: Annotated[Path, typer.Option("--runs", help="runs.jsonl of `bench retrieval --questions/--passages`")],
    rrf_k: Annotated[str, typer.Option("--rrf-k", help="comma-separated RRF constants")] = "2,5,10,60",
    depth: Annotated[int, typer.Option("--depth", help="fuse each list's top N (hybrid's depth)")] = 50,
) -> None:
    """recall@k and MRR of tantivy + dense fused with each RRF constant, from saved rankings (no encoding)."""
    from kinject.io import require_file
    from kinject.retrieval.bench import KS, fusion_table

    try:
        ks = [int(x) for x in rrf_k.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--rrf-k must be comma-separated integers, got {rrf_k!r}") from None
    if depth <= 0:
        raise UserError(f"--depth must be positive, got {depth}")
    rows = fusion_table(require_file(runs, "runs file"), ks, depth)
    cols = [*(f"recall_any@{k}" for k in KS), *(f"recall_all@{k}" for k in KS), f"mrr@{max(KS)}"]
    typer.echo("| run | " + " | ".join(c.replace("recall_", "") for c in cols) + " |")
    typer.echo("|---" * (len(cols) + 1) + "|")
    for r in rows:
        typer.echo(f"| {r['run']} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
    app.add_typer(rag_app, name="rag")
    app.command("search")(search)
