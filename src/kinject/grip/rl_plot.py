"""Per-step RL curves: `metrics.jsonl` (one row per logged step) and a PNG of the main ones."""

from __future__ import annotations

from pathlib import Path

from kinject.io import write_jsonl_atomic

CURVES = (
    ("reward", "mean reward"),
    ("groups_filtered_share", "share of groups filtered"),
    ("retrievals_per_episode", "retrievals / episode"),
    ("completions/mean_length", "response tokens / episode"),
    ("entropy", "token entropy"),
    ("answer_em", "rollout answer EM"),
)


def step_rows(log_history: list[dict]) -> list[dict]:
    """Training-step log entries of a HF/TRL `state.log_history` (the final summary dropped)."""
    return [dict(h) for h in log_history if "step" in h and "reward" in h]


def write_metrics(log_history: list[dict], out_jsonl: str | Path, out_png: str | Path, title: str = "") -> list[dict]:
    rows = step_rows(log_history)
    write_jsonl_atomic(out_jsonl, rows)
    from kinject.plots import save_figure, subplots

    curves = [(k, label) for k, label in CURVES if any(k in r for r in rows)]
    ncols = min(3, max(1, len(curves)))
    nrows = max(1, -(-len(curves) // ncols))
    fig, axes = subplots(nrows, ncols, figsize=(3.6 * ncols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat[len(curves):]:
        ax.axis("off")
    for ax, (key, label) in zip(axes.flat, curves, strict=False):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_png, dpi=110)
    return rows
