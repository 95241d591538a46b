"""`kinject eval run`: every configured method on every configured dataset, one report.

Everything is validated before any model loads (method names and options, metric names,
dataset files and their answers), so a bad config fails in a second with one line. Then each
method is built once and answers each dataset in batches; per-question latency is the batch's
wall time divided by its size (batched decoding, as the methods are served). The output
directory is built under a temporary name and swapped in on success; a re-run with the same
config and inputs is skipped (content hash in the manifest).
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from kinject.errors import UserError
from kinject.eval.config import EvalConfig
from kinject.eval.data import Question, group_by, load_questions, prediction_text
from kinject.eval.method import Method, MethodContext, build_method, resolve_method
from kinject.eval.metrics import check_metric_options, check_metrics
from kinject.eval.report import plot_confusion, write_report
from kinject.eval.results import ResultRow, print_results, write_results
from kinject.eval.routing import macro_accuracy, routing_accuracy, routing_report
from kinject.eval.score import score_answers
from kinject.io import atomic_dir, write_jsonl_atomic
from kinject.log import get_logger
from kinject.runs import RunRecorder, fingerprint, inputs_hash, is_complete

log = get_logger(__name__)

#: trace key -> results metric (mean per question), when the method reports it
TRACE_MEANS = {"added_prompt_tokens": "added_prompt_tokens", "n_retrievals": "avg_retrievals",
               "expert_tokens": "expert_tokens"}


@dataclass
class Prepared:
    name: str
    split: str
    questions: list[Question]
    metrics: list[str]
    path: Path
    answers_from: list[Path] = field(default_factory=list)
    by: str | None = None  # a row field whose values are scored as columns of their own


def prepare_datasets(cfg: EvalConfig, source: str) -> list[Prepared]:
    out, seen = [], set()
    for d in cfg.datasets:
        if d.name in seen:
            raise UserError(f"{source}: dataset name {d.name!r} is used twice")
        seen.add(d.name)
        path = cfg.dataset_path(d)
        if not path.is_file():
            hint = f" (data_root: {cfg.data_root}; build the world with `kinject world build`)" if cfg.data_root else ""
            raise UserError(f"{source}: dataset {d.name!r}: file not found: {path}{hint}")
        metrics = check_metrics(d.metrics or cfg.metrics, f" in {source} (dataset {d.name!r})")
        limit = min(x for x in (d.limit, cfg.limit, 10**12) if x is not None)
        extra = [cfg.resolve(f) for f in d.answers_from]
        for f in extra:
            if not f.is_file():
                raise UserError(f"{source}: dataset {d.name!r}: answers_from file not found: {f}")
        questions = load_questions(path, d.where or None, None if d.sample else limit, extra)
        if d.sample and d.sample < len(questions):
            import random

            keep = sorted(random.Random(f"{cfg.seed}:{d.name}").sample(range(len(questions)), d.sample))
            questions = [questions[i] for i in keep][:limit]
        out.append(Prepared(d.name, d.split, questions, metrics, path, extra, d.by))
    if not out:
        raise UserError(f"{source}: no datasets configured")
    return out


def check_methods(cfg: EvalConfig, source: str) -> None:
    from kinject.config import build_config

    names = [m.name for m in cfg.methods]
    if not names:
        raise UserError(f"{source}: no methods configured")
    known = [d.name for d in cfg.datasets]
    # a method may be listed more than once on disjoint datasets (RAG over each dataset's own
    # index): every (method, dataset) cell of the report still has one source
    claimed: dict[tuple[str, str], int] = {}
    for m in cfg.methods:
        for d in set(m.datasets if m.datasets is not None else known):
            if (m.row, d) in claimed:
                raise UserError(f"{source}: method {m.row!r} is listed twice for dataset {d!r} (entries of one "
                                "method need disjoint `datasets` filters, or a `label` each)")
            claimed[(m.row, d)] = 1
    for m in cfg.methods:
        bad = [d for d in (m.datasets or []) if d not in known]
        if bad:
            raise UserError(f"{source}: method {m.name!r}: unknown dataset {bad[0]!r} in its `datasets` filter; "
                            f"configured datasets: {', '.join(known)}")
        if m.datasets is not None and not m.datasets:
            raise UserError(f"{source}: method {m.name!r}: empty `datasets` filter (drop the method instead)")
    for m in cfg.methods:
        try:
            spec, from_name = resolve_method(m.name)
        except UserError as e:
            raise UserError(f"{source}: {e}") from None
        build_config(spec.options, {**m.options, **from_name}, f"{source}: options of method {m.name!r}")


def option_fingerprints(cfg: EvalConfig) -> dict[str, str]:
    """Files/dirs named in method options (models, adapters, indexes), fingerprinted for the
    inputs hash (`kinject.runs.fingerprint`: cheap for GB-sized model dirs)."""
    out: dict[str, str] = {}

    def walk(v: object) -> None:  # nested options too (per-domain experts, adapters, injectors)
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, (str, Path)) and str(v) and str(v) not in out and Path(v).exists():
            out[str(v)] = fingerprint(v)

    for m in cfg.methods:
        walk(m.options)
    return out


def run_method(method: Method, questions: list[Question], batch_size: int, progress=None, task=None) -> tuple[list[dict], list[float]]:
    """(answers with traces, per-question latency in ms)."""
    answers, latency = [], []
    for i in range(0, len(questions), batch_size):
        batch = [q.as_input() for q in questions[i : i + batch_size]]
        t0 = time.perf_counter()
        got = method.answer(batch)
        dt = (time.perf_counter() - t0) * 1000 / len(batch)
        if len(got) != len(batch) or not all(isinstance(a, dict) and "prediction" in a for a in got):
            raise RuntimeError(f"method {method.name!r} must return one {{'prediction', 'trace'}} dict per question")
        answers += got
        latency += [dt] * len(batch)
        if progress is not None:
            progress.advance(task, len(batch))
    return answers, latency


def routing_pairs(ds: Prepared, answers: list[dict]) -> list[tuple[str, str]]:
    """(gold domain, route) for questions whose row has a `domain` and whose trace a `route`."""
    pairs = [(q.row.get("domain"), (a.get("trace") or {}).get("route")) for q, a in zip(ds.questions, answers, strict=True)]
    return [(str(g), str(p)) for g, p in pairs if g is not None and p is not None]


def efficiency_rows(method: str, ds: Prepared, answers: list[dict], latency: list[float]) -> list[ResultRow]:
    n = len(answers)
    rows = [ResultRow(method=method, dataset=ds.name, split=ds.split, metric="latency_ms_p50",
                      value=statistics.median(latency), n=n)]
    traces = [a.get("trace") or {} for a in answers]
    for key, metric in TRACE_MEANS.items():
        vals = [t[key] for t in traces if isinstance(t.get(key), (int, float))]
        if vals:
            rows.append(ResultRow(method=method, dataset=ds.name, split=ds.split, metric=metric,
                                  value=sum(vals) / len(vals), n=len(vals)))
    routed = routing_pairs(ds, answers)
    if routed:
        gold, pred = [g for g, _ in routed], [p for _, p in routed]
        rows.append(ResultRow(method=method, dataset=ds.name, split=ds.split, metric="routing_accuracy",
                              value=routing_accuracy(gold, pred), n=len(routed)))
        rows.append(ResultRow(method=method, dataset=ds.name, split=ds.split, metric="routing_macro_accuracy",
                              value=macro_accuracy(gold, pred), n=len(routed)))
    return rows


def column_names(ds: Prepared) -> list[str]:
    """The dataset's report column, then one per value of `ds.by` (next to it, not at the end)."""
    return [ds.name, *(f"{ds.name}/{v}" for v in (group_by(ds.questions, ds.by) if ds.by else {}))]


def group_rows(method: str, ds: Prepared, answers: list[dict], latency: list[float],
               per_question: dict[str, list[float]]) -> list[ResultRow]:
    """Rows of dataset `<name>/<value>` for each value of `ds.by`: the same answers, scored per group."""
    rows: list[ResultRow] = []
    for value, idx in (group_by(ds.questions, ds.by) if ds.by else {}).items():
        sub = Prepared(f"{ds.name}/{value}", ds.split, [ds.questions[i] for i in idx], ds.metrics, ds.path)
        rows += [ResultRow(method=method, dataset=sub.name, split=ds.split, metric=m,
                           value=sum(v[i] for i in idx) / len(idx), n=len(idx)) for m, v in per_question.items()]
        rows += efficiency_rows(method, sub, [answers[i] for i in idx], [latency[i] for i in idx])
    return rows


def run_eval(cfg: EvalConfig, out: Path, source: str = "config", force: bool = False, quiet: bool = False) -> list[ResultRow]:
    check_methods(cfg, source)
    datasets = prepare_datasets(cfg, source)
    used = {m for d in datasets for m in d.metrics}
    check_metric_options(cfg.metric_options, sorted(used), f" in {source} (metric_options)")
    curves = dict(cfg.training_curves)  # relative to the working directory, like model paths
    digest = inputs_hash({"config": cfg.model_dump(mode="json"), "options": option_fingerprints(cfg)},
                         *(d.path for d in datasets), *(f for d in datasets for f in d.answers_from),
                         *(p for p in curves.values() if p.is_file()))
    if not force and is_complete(out, digest):
        from kinject.eval.results import read_results

        if not quiet:
            log.info(f"eval run: {out} is complete with the same config and inputs; skipping (use --force to redo)")
        return read_results(out)

    ctx = MethodContext(cfg.device, cfg.dtype, cfg.batch_size, cfg.max_new_tokens, cfg.seed, cfg.answer_format)
    with torch_threads(cfg.num_threads):
        rows = _run(cfg, out, source, ctx, datasets, digest, quiet)
    if not quiet:
        print_results(rows, title=f"eval run -> {out}")
    return rows


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily set torch's intra-op threads (restored afterwards)."""
    if n is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _run(cfg: EvalConfig, out: Path, source: str, ctx: MethodContext, datasets: list[Prepared],
         digest: str, quiet: bool = False) -> list[ResultRow]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    rec = RunRecorder(out, "eval run", cfg, cfg.seed)
    rows: list[ResultRow] = []
    with atomic_dir(out) as tmp, Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        disable=quiet,
    ) as progress:
        for entry in cfg.methods:
            with rec.timer(f"load:{entry.row}"):
                method = build_method(entry.name, entry.options, ctx, source)
            for ds in datasets:
                if entry.datasets is not None and ds.name not in entry.datasets:
                    continue
                task = progress.add_task(f"{entry.row} on {ds.name}", total=len(ds.questions))
                with rec.timer(f"answer:{entry.row}:{ds.name}"):
                    answers, latency = run_method(method, ds.questions, cfg.batch_size, progress, task)
                preds = [prediction_text(a["prediction"]) for a in answers]
                write_jsonl_atomic(tmp / "predictions" / f"{entry.row}__{ds.name}.jsonl", (
                    {"id": q.id, "question": q.question, "answer": q.answers, "prediction": a["prediction"],
                     "trace": a.get("trace") or {}}
                    for q, a in zip(ds.questions, answers, strict=True)))
                with rec.timer(f"score:{entry.row}:{ds.name}"):
                    scored = score_answers(ds.questions, preds, ds.metrics, entry.row, ds.name, ds.split,
                                           cfg.metric_options)
                rows += scored.rows + efficiency_rows(entry.row, ds, answers, latency)
                rows += group_rows(entry.row, ds, answers, latency, scored.per_question)
                routed = routing_pairs(ds, answers)
                if routed and cfg.plots:
                    plot_confusion(tmp / f"routing_confusion__{entry.row}__{ds.name}.png",
                                   routing_report([g for g, _ in routed], [p for _, p in routed]),
                                   f"{entry.row} on {ds.name}")
            del method
            gc.collect()
        write_results(tmp, rows, append=False)
        curves = dict(cfg.training_curves)  # relative to the working directory, like model paths
        write_report(tmp, rows, title="kinject evaluation", plots=cfg.plots,
                     notes=[f"Config: `{source}`. Predictions per method and dataset under `predictions/`."],
                     curves=curves, order=[n for d in datasets for n in column_names(d)])
        rec.metrics = {f"{r.method}/{r.dataset}/{r.metric}": r.value for r in rows}
        rec.write(tmp, inputs_hash=digest)
    return rows
