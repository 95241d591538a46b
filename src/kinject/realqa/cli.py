"""`kinject realqa eval`: any questions JSONL in the real QA schema + its passages TSV, checked,
retrieval quality per backend, and (with an eval config) every method through the harness."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kinject.cliargs import Overrides
from kinject.errors import UserError

realqa_app = typer.Typer(help="Real QA sets with their own passages (data/realqa or the same schema).",
                         no_args_is_help=True)

SPLIT_NAMES = {"dev", "test", "train", "validation", "val"}


def dataset_name(questions: Path) -> str:
    """`data/realqa/multihop/dev.jsonl` -> multihop; `mysets/bioasq.jsonl` -> bioasq."""
    return questions.parent.name if questions.stem in SPLIT_NAMES and questions.parent.name else questions.stem


def dense_options_from(items: list[str] | None) -> dict:
    """`--dense-opt key=value` pairs, checked against the dense backend's options."""
    from kinject.config import apply_overrides
    from kinject.retrieval.base import get_backend
    from kinject.retrieval.index import check_options

    opts = apply_overrides({}, items or [])
    check_options(get_backend("dense"), "dense", opts)
    return opts


def fill_index(methods, index: Path, passages: Path | None = None) -> list[str]:
    """Give the built index to every method that takes an `index` option and was given none, and
    the passages file to every one that takes `passages` (the oracle); returns the names filled."""
    from kinject.eval.method import resolve_method

    filled = []
    for m in methods:
        spec, _ = resolve_method(m.name)
        fields = getattr(spec.options, "model_fields", {})
        given = {"index": str(index), **({"passages": str(passages)} if passages is not None else {})}
        missing = {k: v for k, v in given.items() if k in fields and k not in m.options}
        if missing:
            m.options.update(missing)
            filled.append(m.name)
    return filled


@realqa_app.command("eval")
def eval_cmd(
    questions: Annotated[Path, typer.Option("--questions", help="JSONL: id, question, answer[], type, supporting_pids[]")],
    passages: Annotated[Path, typer.Option("--passages", help="passages TSV: id, text, title (DPR order, header line)")],
    out: Annotated[Path, typer.Option("--out", help="output directory")],
    backends: Annotated[str, typer.Option("--backends", help="retrieval backends to measure (bm25s: reference)")] = "tantivy,dense,hybrid,bm25s",
    config: Annotated[Path | None, typer.Option("--config", "-c", help="eval YAML (kind: eval): its methods run on these questions")] = None,
    name: Annotated[str | None, typer.Option("--name", help="dataset name (default: from the questions path)")] = None,
    split: Annotated[str, typer.Option("--split", help="split name in the results")] = "dev",
    index_backend: Annotated[str, typer.Option("--index-backend", help="backend of the index the methods retrieve from")] = "tantivy",
    threads: Annotated[int, typer.Option("--threads", help="threads for batched search / indexing")] = 2,
    dense_opt: Annotated[list[str] | None, typer.Option("--dense-opt", help="dense backend option key=value (repeatable), e.g. device=cuda")] = None,
    overrides: Overrides = None,
) -> None:
    """Check the files (bad input: one error line, exit 2, nothing written), measure retrieval of the gold
    passages per backend (<out>/retrieval/bench.{json,md}); with --config, index the passages
    (<out>/index) and run the config's methods on the questions, per question type (<out>/eval)."""
    import json

    from kinject.realqa.data import load_qa_set
    from kinject.retrieval.base import get_backend

    if threads <= 0:
        raise UserError(f"--threads must be positive, got {threads}")
    get_backend(index_backend)  # a typo fails before anything is measured
    dense_options = dense_options_from(dense_opt)
    qa = load_qa_set(questions, passages)
    ds = name or dataset_name(questions)
    cfg = None
    if config is not None:
        from kinject.config import load_config
        from kinject.eval.config import DatasetEntry, EvalConfig
        from kinject.eval.harness import check_methods

        cfg = load_config(config, overrides or [], expect=EvalConfig)
        cfg.data_root = None
        cfg.datasets = [DatasetEntry(name=ds, path=questions.resolve(), split=split, by="type")]
        filled = fill_index(cfg.methods, out / "index", passages.resolve())
        check_methods(cfg, str(config))  # before any index is built
    elif overrides:
        raise UserError("overrides apply to --config; give an eval config or drop them")

    from kinject.retrieval.bench import run_corpus_bench

    names = [b.strip() for b in backends.split(",") if b.strip()]
    run_corpus_bench(out / "retrieval", qa.passages, [q.question for q in qa.questions],
                     [q.gold for q in qa.questions], [q.type for q in qa.questions], names,
                     threads=threads, name=ds, qids=[q.id for q in qa.questions], dense_options=dense_options)
    typer.echo((out / "retrieval" / "bench.md").read_text(encoding="utf-8"))
    if cfg is None:
        typer.echo(json.dumps({"dataset": ds, "questions": len(qa.questions), "passages": len(qa.passages),
                               "retrieval": str(out / "retrieval" / "bench.json")}, indent=2))
        return
    from kinject.eval.harness import run_eval
    from kinject.retrieval.index import build_index

    build_index(passages, out / "index", index_backend, progress=False)
    if filled:
        typer.echo(f"methods given {out / 'index'} / {passages}: {', '.join(filled)}", err=True)
    run_eval(cfg, out / "eval", source=str(config))


def register(app: typer.Typer) -> None:
    app.add_typer(realqa_app, name="realqa")
