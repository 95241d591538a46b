"""GAG evaluation with precomputed memories, plus the controls proving the information flows
through the slots: the same injector with zeroed memories (`gag_zero_memory`) and with the
memories of a *different* question (`gag_foreign_memory`; how often the answer is the other
question's value is reported as `foreign_value_rate`).

Rows follow the results schema of docs/design.md: `{method, dataset, split, metric, value, n}`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kinject.eval.data import gold_answers
from kinject.eval.metrics import exact_match, f1_score, has_answer
from kinject.eval.results import ResultRow, metric_rows
from kinject.gag.base import InjectedBase
from kinject.gag.injector import Injector, memory_batch
from kinject.memory.store import MemoryStore, item_id, row_question

METRICS = {"em": exact_match, "f1": f1_score, "has_answer": has_answer}


@torch.no_grad()
def injected_answers(injector: Injector, base: InjectedBase, store: MemoryStore, rows: Sequence[dict],
                     memory_ids: Sequence[str] | None = None, zero: bool = False, batch_size: int = 32,
                     max_new_tokens: int = 32) -> list[str]:
    """Greedy answers to `rows` with the memories of `memory_ids` (default: each row's own)."""
    ids = list(memory_ids) if memory_ids is not None else [item_id(r) for r in rows]
    out = []
    for i in range(0, len(rows), batch_size):
        inputs = memory_batch(injector, store, ids[i:i + batch_size])
        if zero:
            inputs = {k: (torch.zeros_like(v) if k != "traj_mask" else v) for k, v in inputs.items()}
        z = injector(**inputs)
        chunk = rows[i:i + batch_size]
        gens = base.generate([row_question(r) for r in chunk], z, max_new_tokens, batch_size,
                             [r.get("instruction") for r in chunk])
        out += [g.text for g in gens]
    return out


def score(method: str, dataset: str, split: str, preds: Sequence[str], golds: Sequence[list[str]]) -> list[ResultRow]:
    values = {name: sum(fn(p, g) for p, g in zip(preds, golds)) / max(len(golds), 1) for name, fn in METRICS.items()}
    return metric_rows(method, dataset, split, values, len(golds), ndigits=4)


def evaluate_gag(injector: Injector, base: InjectedBase, store: MemoryStore, rows: Sequence[dict], dataset: str,
                 split: str, controls: bool = True, batch_size: int = 32, max_new_tokens: int = 32) -> dict:
    """-> {"results": [ResultRow...], "predictions": [...], "foreign_value_rate": float | None}."""
    rows = list(rows)
    golds = [gold_answers(r, f"{dataset} {split}: question {item_id(r)}") for r in rows]
    preds = injected_answers(injector, base, store, rows, batch_size=batch_size, max_new_tokens=max_new_tokens)
    results = score("gag", dataset, split, preds, golds)
    predictions = [{"id": item_id(r), "question": row_question(r), "gold": g, "gag": p}
                   for r, g, p in zip(rows, golds, preds)]
    foreign_rate = None
    if controls and len(rows) > 1:
        zero = injected_answers(injector, base, store, rows, zero=True, batch_size=batch_size,
                                max_new_tokens=max_new_tokens)
        results += score("gag_zero_memory", dataset, split, zero, golds)
        # each question gets the memory of the next question whose gold answer differs
        ids = [item_id(r) for r in rows]
        other = []
        for k in range(len(rows)):
            j = next((j % len(rows) for j in range(k + 1, k + len(rows))
                      if golds[j % len(rows)] != golds[k]), (k + 1) % len(rows))
            other.append(j)
        foreign = injected_answers(injector, base, store, rows, [ids[j] for j in other], batch_size=batch_size,
                                   max_new_tokens=max_new_tokens)
        results += score("gag_foreign_memory", dataset, split, foreign, golds)
        foreign_rate = round(sum(exact_match(p, golds[j]) for p, j in zip(foreign, other)) / len(rows), 4)
        for p, z, f in zip(predictions, zero, foreign):
            p.update({"zero_memory": z, "foreign_memory": f})
    return {"results": results, "predictions": predictions, "foreign_value_rate": foreign_rate}
