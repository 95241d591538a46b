"""`results.jsonl`: the one schema every evaluation writes, one row per number.

`{"method", "dataset", "split", "metric", "value", "n"}`. Every evaluator builds `ResultRow`s
(`metric_rows` for the metrics of one method x dataset), writes them with `write_results` and
prints them with `print_results`. The writer is atomic: the file is rewritten under a temporary
name and renamed, so a crash never leaves half a file; by default it upserts (rows already in the
file with the same (method, dataset, split, metric) key are replaced). The table printer lays
rows out as the papers do: one row per method, one column per dataset x metric.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pydantic import ValidationError

from kinject.config import StrictModel
from kinject.errors import UserError
from kinject.io import iter_jsonl, write_jsonl_atomic

RESULTS_FILE = "results.jsonl"


class ResultRow(StrictModel):
    method: str
    dataset: str
    split: str
    metric: str
    value: float
    n: int

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.method, self.dataset, self.split, self.metric)


def metric_rows(method: str, dataset: str, split: str, values: Mapping[str, float], n: int,
                ndigits: int | None = None) -> list[ResultRow]:
    """One row per metric of one method on one dataset split (`ndigits`: round the values)."""
    return [ResultRow(method=method, dataset=dataset, split=split, metric=m,
                      value=v if ndigits is None else round(v, ndigits), n=n) for m, v in values.items()]


def read_results(path: str | os.PathLike) -> list[ResultRow]:
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    rows = []
    for i, raw in enumerate(iter_jsonl(p), 1):
        try:
            rows.append(ResultRow.model_validate(raw))
        except ValidationError as e:
            err = e.errors()[0]
            raise UserError(f"{p}: row {i}: bad results row ({'.'.join(map(str, err['loc']))}: {err['msg']})") from None
    return rows


def write_results(path: str | os.PathLike, rows: Iterable[ResultRow], append: bool = True) -> Path:
    """Write rows to `path` (a file or a directory holding results.jsonl), atomically.

    `append`: upsert by key into the rows already there; else the file holds exactly `rows`, in order."""
    p = Path(path)
    if p.is_dir() or p.suffix != ".jsonl":
        p = p / RESULTS_FILE
    if append:
        merged = {r.key: r for r in read_results(p)} if p.is_file() else {}
        merged.update((r.key, r) for r in rows)
        rows = merged.values()
    return write_jsonl_atomic(p, (r.model_dump() for r in rows))


#: shorter column headings for the terminal table (results.jsonl keeps the full metric names)
SHORT = {"latency_ms_p50": "ms/q p50", "added_prompt_tokens": "+tokens", "avg_retrievals": "retrievals",
         "expert_tokens": "expert tok", "routing_accuracy": "route acc", "routing_macro_accuracy": "route macro",
         "bertscore_f1": "bertscore"}


def _columns(rows: Sequence[ResultRow]) -> list[tuple[str, str, str]]:
    cols: list[tuple[str, str, str]] = []
    for r in rows:
        c = (r.dataset, r.split, r.metric)
        if c not in cols:
            cols.append(c)
    return cols


def pivot(rows: Sequence[ResultRow]) -> tuple[list[str], list[tuple[str, str, str]], dict]:
    """(methods, columns (dataset, split, metric), {(method, column): row}) in first-seen order."""
    methods = list(dict.fromkeys(r.method for r in rows))
    return methods, _columns(rows), {(r.method, (r.dataset, r.split, r.metric)): r for r in rows}


def format_value(metric: str, value: float) -> str:
    if math.isnan(value):
        return "nan"
    if metric in ("added_prompt_tokens", "latency_ms_p50", "avg_retrievals", "expert_tokens", "new_tokens"):
        return f"{value:.1f}"
    return f"{value:.3f}"


def results_table(rows: Sequence[ResultRow], title: str | None = None):
    """A rich Table: rows = methods; columns = dataset (split) x metric."""
    from rich import box
    from rich.table import Table

    methods, cols, cells = pivot(rows)
    splits_vary = len({s for _, s, _ in cols}) > 1
    one_dataset = len({(d, s) for d, s, _ in cols}) == 1
    if one_dataset and title is None:
        title = f"{cols[0][0]} ({cols[0][1]})"
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("method", style="bold")
    for ds, split, metric in cols:
        head = f"{ds} ({split})" if splits_vary else ds
        short = SHORT.get(metric, metric)
        table.add_column(short if one_dataset else f"{head}\n{short}", justify="right", min_width=len(short))
    for m in methods:
        cells_m = [cells.get((m, c)) for c in cols]
        table.add_row(m, *("-" if r is None else format_value(r.metric, r.value) for r in cells_m))
    return table


def _table_width(rows: Sequence[ResultRow]) -> int:
    methods, cols, _ = pivot(rows)
    return max(map(len, ["method", *methods])) + 2 + sum(max(len(d) + len(s) + 3, len(SHORT.get(m, m)), 6) + 3 for d, s, m in cols)


def print_results(rows: Sequence[ResultRow], title: str | None = None) -> None:
    """Print the table; when it is wider than the terminal, one table per dataset instead."""
    from rich.console import Console

    console = Console()
    if _table_width(rows) <= console.width or len({(r.dataset, r.split) for r in rows}) == 1:
        console.print(results_table(rows, title))
        return
    if title:
        console.print(title)
    for ds, split in dict.fromkeys((r.dataset, r.split) for r in rows):
        console.print(results_table([r for r in rows if (r.dataset, r.split) == (ds, split)]))
