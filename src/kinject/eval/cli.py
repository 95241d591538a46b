"""`kinject eval ...`: score predictions made anywhere, run the harness, show results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kinject.cliargs import Overrides
from kinject.errors import UserError

eval_app = typer.Typer(help="Evaluate: metrics, scoring of predictions, the method x dataset harness.",
                       no_args_is_help=True)


def _metric_options(items: list[str] | None) -> dict[str, dict]:
    from kinject.config import parse_override

    out: dict[str, dict] = {}
    for text in items or []:
        parts, value = parse_override(text)
        if len(parts) != 2:
            raise UserError(f"--option {text!r} must look like metric.key=value (e.g. bertscore_f1.num_layers=8)")
        out.setdefault(parts[0], {})[parts[1]] = value
    return out


@eval_app.command("score")
def score_cmd(
    predictions: Annotated[Path, typer.Option("--predictions", help="JSONL: prediction + id or question")],
    references: Annotated[Path, typer.Option("--references", help="JSONL: question (or input) + answer")],
    out: Annotated[Path, typer.Option("--out", help="output directory (results.jsonl is upserted)")],
    metrics: Annotated[str, typer.Option("--metrics", help="comma-separated metric names")] = "em,f1,has_answer",
    method: Annotated[str, typer.Option("--method", help="method name for the results rows")] = "predictions",
    dataset: Annotated[str | None, typer.Option("--dataset", help="dataset name (default: references file stem)")] = None,
    split: Annotated[str, typer.Option("--split", help="split name for the results rows")] = "test",
    option: Annotated[list[str] | None, typer.Option("--option", help="metric option, e.g. bertscore_f1.num_layers=8")] = None,
) -> None:
    """Score a predictions file against gold answers; write results.jsonl and print the table."""
    from kinject.eval.data import load_predictions, load_questions, match_predictions
    from kinject.eval.metrics import check_metric_options, check_metrics
    from kinject.eval.results import print_results, write_results
    from kinject.eval.score import score_answers
    from kinject.io import write_jsonl_atomic
    from kinject.runs import RunRecorder

    names = check_metrics(metrics.split(","), " in --metrics")
    opts = _metric_options(option)
    check_metric_options(opts, names, " (--option)")
    questions = load_questions(references)
    matched = match_predictions(questions, load_predictions(predictions))
    ds = dataset or references.stem
    scored = score_answers(questions, matched.predictions, names, method, ds, split, opts)
    out.mkdir(parents=True, exist_ok=True)
    rec = RunRecorder(out, "eval score", {"predictions": str(predictions), "references": str(references),
                                          "metrics": names, "options": opts, "method": method, "dataset": ds,
                                          "split": split})
    write_jsonl_atomic(out / f"scores__{method}__{ds}.jsonl", (
        {"id": q.id, "question": q.question, "answer": q.answers, "prediction": p,
         **{m: v[i] for m, v in scored.per_question.items()}}
        for i, (q, p) in enumerate(zip(questions, matched.predictions, strict=True))))
    write_results(out, scored.rows)
    rec.metrics = {r.metric: r.value for r in scored.rows}
    rec.extra = {"missing_predictions": len(matched.missing), "unmatched_predictions": matched.unmatched}
    rec.write()
    print_results(scored.rows, title=f"{method} on {ds} ({split}), n={len(questions)}")
    if matched.missing:
        shown = ", ".join(q.id or repr(q.question[:40]) for q in matched.missing[:5])
        typer.echo(f"warning: {len(matched.missing)} of {len(questions)} questions have no prediction "
                   f"and count as wrong (e.g. {shown})", err=True)
    if matched.unmatched:
        typer.echo(f"warning: {matched.unmatched} predictions match no question and were ignored", err=True)
    typer.echo(f"wrote {out / 'results.jsonl'}")


@eval_app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="eval YAML (kind: eval)")],
    out: Annotated[Path, typer.Option("--out", help="output directory")],
    overrides: Overrides = None,
    force: Annotated[bool, typer.Option("--force", help="redo even if complete and unchanged")] = False,
) -> None:
    """Run every configured method on every dataset; write results.jsonl, predictions, report."""
    from kinject.config import load_config
    from kinject.eval.config import EvalConfig
    from kinject.eval.harness import run_eval

    cfg = load_config(config, overrides or [], expect=EvalConfig)
    run_eval(cfg, out, source=str(config), force=force)
    typer.echo(f"report: {out / 'report.md'}")


@eval_app.command("show")
def show_cmd(path: Annotated[Path, typer.Argument(help="results.jsonl or a directory holding it")]) -> None:
    """Print a results.jsonl as the table (rows = methods, columns = dataset x metric)."""
    from kinject.eval.results import print_results, read_results

    print_results(read_results(path), title=str(path))


@eval_app.command("methods")
def methods_cmd() -> None:
    """List the registered evaluation methods."""
    from kinject.eval.method import discover_methods

    for name, spec in sorted(discover_methods().items()):
        typer.echo(f"{name}\t{spec.help}")


@eval_app.command("metrics")
def metrics_cmd() -> None:
    """List the registered metrics."""
    from kinject.eval.metrics import METRICS

    for name in METRICS:
        typer.echo(name)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
