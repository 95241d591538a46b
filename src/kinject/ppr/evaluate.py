"""Routing evaluation: micro/macro/per-domain accuracy, confusion matrix, single-query latency.

Writes into its output dir: `results.jsonl` (the common schema), `predictions.jsonl`,
`confusion.csv`, `confusion.md`, `confusion.png`, `summary.json`, `manifest.json`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kinject.errors import UserError
from kinject.eval.results import ResultRow, metric_rows, write_results
from kinject.io import iter_jsonl, write_json_atomic, write_jsonl_atomic, write_text_atomic
from kinject.ppr.router import Router

METHOD = "ppr"


@dataclass
class LabelledQuestion:
    question: str
    label: str


@dataclass
class EvalResult:
    questions: list[LabelledQuestion]
    routes: list[str]
    decisions: list[dict]
    labels: list[str]  # confusion-matrix rows (gold domains: bank order, then others)
    columns: list[str]  # confusion-matrix columns (bank domains, then any other predicted route)
    confusion: np.ndarray  # [len(labels), len(columns)] counts
    accuracy: float
    macro_accuracy: float
    per_domain: dict[str, tuple[float, int]]  # domain -> (accuracy, n)
    latency_ms: list[float]
    n_truncated: int
    throughput_qps: float


def read_labelled(path: str | Path, only: list[str] | None = None) -> list[LabelledQuestion]:
    """JSONL rows with `question` and a domain NAME in `domain` or `label` (never a bare id:
    label ids differ between the paper's releases)."""
    out = []
    n = 0
    for n, row in enumerate(iter_jsonl(path, required=["question"]), 1):
        label = row.get("domain", row.get("label"))
        if label is None:
            raise UserError(f"{path}: record {n} has no 'domain' or 'label' field")
        if not isinstance(label, str) or not label.strip():
            raise UserError(f"{path}: record {n}: label {label!r} must be a domain name (e.g. 'materials'), not an id")
        q = row["question"]
        if not isinstance(q, str) or not q.strip():
            raise UserError(f"{path}: record {n} has an empty 'question'")
        if only is None or label in only:
            out.append(LabelledQuestion(q, label))
    if n == 0:
        raise UserError(f"{path}: no records (empty file)")
    if not out:
        raise UserError(f"{path}: no records labelled {', '.join(only or [])}")
    return out


def evaluate(router: Router, data: list[LabelledQuestion], n_latency: int = 200,
             progress: bool = True) -> EvalResult:
    t0 = time.perf_counter()
    decisions = router.route_batch([d.question for d in data], progress=progress)
    qps = len(data) / max(time.perf_counter() - t0, 1e-9)
    routes = [d.route for d in decisions]
    present = set(d.label for d in data)
    labels = [x for x in router.domains if x in present]
    labels += [x for x in dict.fromkeys(d.label for d in data) if x not in labels]
    columns = list(router.domains) + sorted({r for r in routes if r not in router.domains})
    columns += [lab for lab in labels if lab not in columns]
    conf = np.zeros((len(labels), len(columns)), dtype=np.int64)
    for d, r in zip(data, routes):
        conf[labels.index(d.label), columns.index(r)] += 1
    per_domain = {}
    for i, lab in enumerate(labels):
        n = int(conf[i].sum())
        per_domain[lab] = (float(conf[i, columns.index(lab)]) / n, n)
    correct = sum(d.label == r for d, r in zip(data, routes))
    # Latency as a served request sees it: one query at a time, encoder + scoring.
    latency = []
    sample = [d.question for d in data[: max(0, n_latency)]]
    if sample:
        router.route(sample[0])  # warm-up
        for q in sample:
            t = time.perf_counter()
            router.route(q)
            latency.append((time.perf_counter() - t) * 1000)
    return EvalResult(
        questions=data, routes=routes, decisions=[d.to_dict() for d in decisions],
        labels=labels, columns=columns, confusion=conf,
        accuracy=correct / len(data),
        macro_accuracy=float(np.mean([a for a, _ in per_domain.values()])),
        per_domain=per_domain, latency_ms=latency,
        n_truncated=sum(d.truncated_from is not None for d in decisions), throughput_qps=qps,
    )


def result_rows(res: EvalResult, dataset: str, split: str, method: str = METHOD) -> list[ResultRow]:
    """Accuracy and macro accuracy on `dataset`, accuracy per gold domain (as its dataset), latency."""
    rows = metric_rows(method, dataset, split, {"accuracy": res.accuracy, "macro_accuracy": res.macro_accuracy},
                       len(res.questions), ndigits=6)
    for lab, (acc, k) in res.per_domain.items():
        rows += metric_rows(method, lab, split, {"accuracy": acc}, k, ndigits=6)
    if res.latency_ms:
        rows += metric_rows(method, dataset, split, {"latency_ms_p50": float(np.percentile(res.latency_ms, 50))},
                            len(res.latency_ms), ndigits=3)
    return rows


def confusion_markdown(res: EvalResult) -> str:
    head = "| gold \\ routed | " + " | ".join(res.columns) + " | n | accuracy |"
    sep = "|---" * (len(res.columns) + 3) + "|"
    lines = [head, sep]
    for i, lab in enumerate(res.labels):
        acc, n = res.per_domain[lab]
        cells = " | ".join(str(int(x)) for x in res.confusion[i])
        lines.append(f"| {lab} | {cells} | {n} | {acc:.4f} |")
    return "\n".join(lines) + "\n"


def confusion_csv(res: EvalResult) -> str:
    lines = ["gold," + ",".join(res.columns)]
    for i, lab in enumerate(res.labels):
        lines.append(lab + "," + ",".join(str(int(x)) for x in res.confusion[i]))
    return "\n".join(lines) + "\n"


def plot_confusion(res: EvalResult, path: Path, title: str) -> None:
    from kinject.plots import save_figure, subplots

    rows = res.confusion.sum(axis=1, keepdims=True).clip(min=1)
    frac = res.confusion / rows
    fig, ax = subplots(figsize=(1.4 + 1.1 * len(res.columns), 1.2 + 0.8 * len(res.labels)))
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(res.columns)), res.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(res.labels)), res.labels)
    ax.set_xlabel("routed to")
    ax.set_ylabel("gold domain")
    for i in range(len(res.labels)):
        for j in range(len(res.columns)):
            ax.text(j, i, str(int(res.confusion[i, j])), ha="center", va="center",
                    color="white" if frac[i, j] > 0.5 else "black", fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def write_eval(res: EvalResult, out: Path, dataset: str, split: str) -> list[ResultRow]:
    """Write every eval artifact into `out` (an existing, usually temporary, directory)."""
    rows = result_rows(res, dataset, split)
    write_results(out / "results.jsonl", rows, append=False)
    write_jsonl_atomic(out / "predictions.jsonl", (
        {"question": q.question, "label": q.label, **dec} for q, dec in zip(res.questions, res.decisions)
    ))
    write_text_atomic(out / "confusion.csv", confusion_csv(res))
    write_text_atomic(out / "confusion.md", confusion_markdown(res))
    plot_confusion(res, out / "confusion.png", f"PPR routing: {dataset}/{split} (accuracy {res.accuracy:.4f})")
    errors = Counter((q.label, r) for q, r in zip(res.questions, res.routes) if q.label != r)
    write_json_atomic(out / "summary.json", {
        "accuracy": res.accuracy, "macro_accuracy": res.macro_accuracy,
        "per_domain": {k: {"accuracy": a, "n": n} for k, (a, n) in res.per_domain.items()},
        "n": len(res.questions), "n_errors": int(sum(errors.values())),
        "errors_by_pair": {f"{g}->{r}": c for (g, r), c in errors.most_common()},
        "latency_ms_p50": float(np.percentile(res.latency_ms, 50)) if res.latency_ms else None,
        "latency_ms_p90": float(np.percentile(res.latency_ms, 90)) if res.latency_ms else None,
        "batched_queries_per_s": res.throughput_qps,
        "n_truncated": res.n_truncated,
    })
    return rows


def plug_and_play(domains: list[tuple[str, Path]], data: list[LabelledQuestion], banks_dir: Path,
                  cfg, encoder=None, n_initial: int = 2, progress: bool = False) -> dict:
    """Build banks for the first `n_initial` domains, evaluate on their questions, then add the
    remaining domains one by one (`add_domain`, no rebuild) and evaluate the same questions
    again. The drop, in accuracy points, must stay small: existing banks are not touched."""
    from kinject.ppr.banks import add_domain, build_banks
    from kinject.ppr.encoders import MemoEncoder, load_encoder

    # the same questions are encoded for three evaluations and the banks: once is enough
    encoder = MemoEncoder(encoder or load_encoder(cfg.encoder))
    first, rest = domains[:n_initial], domains[n_initial:]
    names = {n for n, _ in first}
    subset = [d for d in data if d.label in names]
    if not subset or not rest:
        raise UserError(f"plug-and-play needs questions of {sorted(names)} and at least {n_initial + 1} domains")
    build_banks(first, banks_dir, cfg, encoder, progress=progress)
    before = evaluate(Router.from_pretrained(banks_dir, encoder), subset, n_latency=0, progress=progress)
    for name, path in rest:
        add_domain(banks_dir, name, path, cfg, encoder, progress=progress)
    router = Router.from_pretrained(banks_dir, encoder)
    after = evaluate(router, subset, n_latency=0, progress=progress)
    full = evaluate(router, data, n_latency=0, progress=progress)
    return {
        "initial_domains": [n for n, _ in first], "added_domains": [n for n, _ in rest],
        "n_initial_questions": len(subset),
        "accuracy_initial_before_add": before.accuracy,
        "accuracy_initial_after_add": after.accuracy,
        "drop_points": 100 * (before.accuracy - after.accuracy),
        "accuracy_all_after_add": full.accuracy,
        "macro_accuracy_all_after_add": full.macro_accuracy,
        "per_domain_after_add": {k: a for k, (a, _) in full.per_domain.items()},
    }
