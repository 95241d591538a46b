"""`report.md` and PNG plots from results rows, laid out like the papers' tables.

A main table (rows = methods; columns = each dataset's headline metric, the first listed for it,
then the efficiency columns: routing accuracy, added prompt tokens, median latency per question,
retrievals, expert tokens when reported), then one table per answer metric. Plots: the primary metric per method and
dataset (grouped bars) and the primary metric vs added prompt tokens (one point per method).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from kinject.eval.results import ResultRow, format_value
from kinject.io import write_text_atomic

EFFICIENCY_METRICS = ("added_prompt_tokens", "latency_ms_p50", "avg_retrievals", "expert_tokens")
ROUTING_METRICS = ("routing_accuracy", "routing_macro_accuracy")
HEADINGS = {
    "added_prompt_tokens": "added tokens",
    "latency_ms_p50": "latency p50 (ms)",
    "avg_retrievals": "retrievals",
    "expert_tokens": "expert tokens",
    "routing_accuracy": "routing acc.",
    "routing_macro_accuracy": "routing macro acc.",
}


def _method_mean(rows: Sequence[ResultRow], method: str, metric: str) -> float | None:
    """Mean over a method's datasets, weighted by question count."""
    sel = [r for r in rows if r.method == method and r.metric == metric]
    if not sel:
        return None
    if metric == "latency_ms_p50":  # a median of medians: the per-dataset medians' median
        return statistics.median(r.value for r in sel)
    total = sum(r.n for r in sel)
    return sum(r.value * r.n for r in sel) / total if total else None


def _datasets(rows: Sequence[ResultRow], order: Sequence[str] = ()) -> list[str]:
    """Datasets in `order` (the config's) first, then any other in order of appearance."""
    seen = dict.fromkeys(r.dataset for r in rows)
    return [d for d in order if d in seen] + [d for d in seen if d not in order]


def primary_metric(rows: Sequence[ResultRow], dataset: str) -> str | None:
    """The first answer metric recorded for a dataset (the config lists the headline first)."""
    skip = set(EFFICIENCY_METRICS) | set(ROUTING_METRICS)
    return next((r.metric for r in rows if r.dataset == dataset and r.metric not in skip), None)


def markdown_report(rows: Sequence[ResultRow], title: str = "Evaluation report", notes: Sequence[str] = (),
                    order: Sequence[str] = ()) -> str:
    methods = list(dict.fromkeys(r.method for r in rows))
    datasets = _datasets(rows, order)
    splits = {r.dataset: r.split for r in rows}
    ns = {r.dataset: r.n for r in rows if r.metric not in EFFICIENCY_METRICS}
    cell = {(r.method, r.dataset, r.metric): r for r in rows}
    skip = set(EFFICIENCY_METRICS) | set(ROUTING_METRICS)
    answer_metrics = list(dict.fromkeys(r.metric for r in rows if r.metric not in skip))
    extra = [m for m in (*ROUTING_METRICS, *EFFICIENCY_METRICS) if any(r.metric == m for r in rows)]

    def efficiency_cells(m: str) -> list[str]:
        vals = []
        for e in extra:
            v = _method_mean(rows, m, e)
            vals.append("-" if v is None else format_value(e, v))
        return vals

    lines = [f"# {title}", ""]
    lines += [f"Datasets: {', '.join(f'{d} ({splits[d]}, n={ns.get(d, 0)})' for d in datasets)}.", ""]
    # the papers' layout: one headline number per dataset, then the efficiency columns
    heads = [(d, primary_metric(rows, d)) for d in datasets if primary_metric(rows, d)]
    lines += ["## Main table", ""]
    head = ["method", *(f"{d} ({m})" for d, m in heads), *(HEADINGS[m] for m in extra)]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        vals = [format_value(k, cell[(m, d, k)].value) if (m, d, k) in cell else "-" for d, k in heads]
        lines.append("| " + " | ".join([m, *vals, *efficiency_cells(m)]) + " |")
    lines.append("")
    if extra:
        lines += ["Efficiency columns: mean over the method's datasets, weighted by question count",
                  "(latency: median of the per-dataset medians, per question, with batched decoding).", ""]
    for metric in answer_metrics:
        cols = [d for d in datasets if any((m, d, metric) in cell for m in methods)]
        lines += [f"## {metric}", ""]
        lines += ["| " + " | ".join(["method", *cols]) + " |", "|" + "---|" * (len(cols) + 1)]
        for m in methods:
            vals = [format_value(metric, cell[(m, d, metric)].value) if (m, d, metric) in cell else "-" for d in cols]
            lines.append("| " + " | ".join([m, *vals]) + " |")
        lines.append("")
    lines += [*notes]
    return "\n".join(lines).rstrip() + "\n"


def write_report(out: Path, rows: Sequence[ResultRow], title: str = "Evaluation report",
                 notes: Sequence[str] = (), plots: bool = True, curves: dict[str, Path] | None = None,
                 order: Sequence[str] = ()) -> list[Path]:
    """report.md (+ accuracy plots, the routing confusion matrices already in `out`, and the
    training curves: each stage's PNG copied to `curves/` and tiled into `training_curves.png`)."""
    written: list[Path] = []
    if plots:
        notes = [*notes, "", "## Plots", "", "![accuracy per method and dataset](accuracy.png)", "",
                 "![accuracy vs added tokens](accuracy_vs_tokens.png)", ""]
        if any(r.metric == "avg_retrievals" for r in rows):
            notes += ["![accuracy vs retrievals per question](accuracy_vs_retrievals.png)", ""]
        notes += [f"![routing confusion]({p.name})" for p in sorted(out.glob("routing_confusion__*.png"))]
        found = {k: p for k, p in (curves or {}).items() if Path(p).is_file()}
        missing = sorted(set(curves or {}) - set(found))
        if found:
            written += collect_curves(out, found)
            notes += ["", "## Training curves", "", "![training curves](training_curves.png)", "",
                      "Per stage: " + ", ".join(f"[{k}](curves/{_slug(k)}.png)" for k in found) + "."]
        if missing:
            notes += ["", f"Training curves not found (stage not run): {', '.join(missing)}."]
    written.insert(0, write_text_atomic(out / "report.md", markdown_report(rows, title, notes, order)))
    if plots:
        written += plot_results(out, rows, order)
    return written


def _read_log(path: Path) -> list[dict]:
    """A trainer log: a JSON list (HF `log_history`) or JSONL rows, each with `step` and `loss`."""
    import json

    text = path.read_text(encoding="utf-8")
    rows = json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
    return [r for r in rows if isinstance(r, dict) and "step" in r]


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label)


def collect_curves(out: Path, curves: dict[str, Path]) -> list[Path]:
    """Copy each stage's curve PNG to `curves/<label>.png` and tile them into `training_curves.png`."""
    import shutil

    import matplotlib.image as mpimg

    from kinject.plots import subplots

    (out / "curves").mkdir(parents=True, exist_ok=True)
    paths = []
    for label, src in curves.items():
        dst = out / "curves" / f"{_slug(label)}.png"
        if Path(src).suffix in (".json", ".jsonl"):  # a trainer log without a PNG (e.g. GRIP SFT)
            from kinject.expert.training import plot_loss_curves

            plot_loss_curves(_read_log(Path(src)), dst, label)
        else:
            shutil.copyfile(src, dst)
        paths.append(dst)
    curves = {label: out / "curves" / f"{_slug(label)}.png" for label in curves}
    cols = min(3, len(curves))
    nrows = -(-len(curves) // cols)
    fig, axes = subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
    for ax, (label, src) in zip(axes.flat, curves.items()):
        ax.imshow(mpimg.imread(src))
        ax.set_title(label, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("Training curves of the pipeline's stages")
    paths.append(_save(fig, out / "training_curves.png"))
    return paths


def _save(fig, path: Path) -> Path:
    from kinject.plots import save_figure

    return save_figure(fig, path, dpi=120, tight=True)


def plot_results(out: Path, rows: Sequence[ResultRow], order: Sequence[str] = ()) -> list[Path]:
    from kinject.plots import subplots

    methods = list(dict.fromkeys(r.method for r in rows))
    datasets = [d for d in _datasets(rows, order) if primary_metric(rows, d)]
    cell = {(r.method, r.dataset, r.metric): r.value for r in rows}
    paths = []

    bars_total = len(datasets) * max(1, len(methods))
    fig, ax = subplots(figsize=(min(16, max(5, 0.22 * bars_total + 2)), 3.6))
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        # only the datasets the method ran on get a bar (a method filtered off a dataset is not a 0)
        js = [j for j, d in enumerate(datasets) if (m, d, primary_metric(rows, d)) in cell]
        ys = [cell[(m, datasets[j], primary_metric(rows, datasets[j]))] for j in js]
        bars = ax.bar([j + i * width for j in js], ys, width, label=m)
        ax.bar_label(bars, fmt="%.2f", fontsize=6 if bars_total > 24 else 7, rotation=90 if bars_total > 24 else 0)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(datasets))])
    ax.set_xticklabels([f"{d}\n({primary_metric(rows, d)})" for d in datasets])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title("Accuracy per method and dataset")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    paths.append(_save(fig, out / "accuracy.png"))

    fig, ax = subplots(figsize=(5, 3.6))
    for m in methods:
        x = _method_mean(rows, m, "added_prompt_tokens")
        ys = [cell[(m, d, primary_metric(rows, d))] for d in datasets if (m, d, primary_metric(rows, d)) in cell]
        if x is None or not ys:
            continue
        y = sum(ys) / len(ys)
        ax.scatter([x], [y])
        ax.annotate(m, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    xmax = max((_method_mean(rows, m, "added_prompt_tokens") or 0.0 for m in methods), default=0.0)
    ax.set_xlim(-0.05 * xmax - 1, 1.2 * xmax + 1)
    ax.set_xlabel("added prompt tokens per question")
    ax.set_ylabel("mean primary score over datasets")
    ax.set_ylim(0, 1)
    ax.set_title("Accuracy vs added tokens")
    paths.append(_save(fig, out / "accuracy_vs_tokens.png"))
    if any(r.metric == "avg_retrievals" for r in rows):
        paths.append(plot_vs_retrievals(out / "accuracy_vs_retrievals.png", rows, datasets))
    return paths


def plot_vs_retrievals(path: Path, rows: Sequence[ResultRow], datasets: Sequence[str]) -> Path:
    """Score against retrievals per question, one panel per top-level dataset (the GRIP paper's
    figure): a row of panels for the dataset's headline metric, and one for EM when EM is not
    the headline. Methods that report no retrieval count (GAG, text injection) are left out."""
    from kinject.plots import subplots

    cell = {(r.method, r.dataset, r.metric): r.value for r in rows}
    methods = list(dict.fromkeys(r.method for r in rows))
    tops = [d for d in datasets if "/" not in d] or list(datasets)
    metrics = list(dict.fromkeys(["headline", *(["em"] if any(r.metric == "em" for r in rows) else [])]))
    fig, axes = subplots(len(metrics), len(tops), figsize=(3.4 * len(tops) + 1.5, 3.0 * len(metrics)), squeeze=False)
    for i, which in enumerate(metrics):
        for j, d in enumerate(tops):
            metric = primary_metric(rows, d) if which == "headline" else "em"
            ax = axes[i][j]
            for m in methods:
                x, y = cell.get((m, d, "avg_retrievals")), cell.get((m, d, metric))
                if x is None or y is None:
                    continue
                ax.scatter([x], [y])
                ax.annotate(m, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
            ax.set_title(d, fontsize=9)
            ax.set_xlabel("retrievals per question")
            ax.set_ylabel(metric)
            ax.set_xlim(-0.2, max(2.0, *(v + 0.3 for (_, dd, k), v in cell.items() if dd == d and k == "avg_retrievals")))
            ax.set_ylim(0, 1)
    fig.suptitle("Accuracy vs retrievals per question")
    return _save(fig, path)


def plot_confusion(path: Path, report, title: str = "") -> Path:
    """Routing confusion matrix (rows = gold domain, columns = route), counts in the cells."""
    from kinject.plots import subplots

    n = len(report.labels)
    fig, ax = subplots(figsize=(1.2 * n + 2, 1.0 * n + 1.5))
    ax.imshow(report.confusion, cmap="Blues")
    ax.set_xticks(range(n), report.labels, rotation=30, ha="right")
    ax.set_yticks(range(n), report.labels)
    top = max(max(r) for r in report.confusion) or 1
    for i, r in enumerate(report.confusion):
        for j, v in enumerate(r):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    ax.set_xlabel("route")
    ax.set_ylabel("gold domain")
    ax.set_title(f"Routing {title} (acc {report.accuracy:.3f}, macro {report.macro_accuracy:.3f})", fontsize=9)
    path = _save(fig, path)
    return path
