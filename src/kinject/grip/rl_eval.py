"""Evaluate a GRIP checkpoint with the inference loop (greedy) on QA files: EM, F1, cover-EM,
average retrievals; on the whole file and on the world subsets (`_popular`, `_longtail`, `_2hop`),
named as the GRIP eval names them so `grip` / `grip_rl` rows line up with `kinject grip eval`.

Used by `kinject grip rl` to compare the SFT start (`grip`) with the RL result (`grip_rl`) on the
same questions; rows follow the one `results.jsonl` schema.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from kinject.eval.metrics import ANSWER_METRICS
from kinject.grip.agent import AgentSettings, GripAgent, SearchBackend
from kinject.io import read_jsonl

METRICS = ("em", "f1", "cover_em")


def dataset_and_split(path: str | Path) -> tuple[str, str]:
    """`.../wiki/qa_test.jsonl` -> ("wiki", "test")."""
    p = Path(path)
    return p.parent.name, p.stem.removeprefix("qa_")


def subsets(row: dict, dataset: str) -> list[str]:
    """The whole file, plus the world subset of the row: `_2hop` (multi-hop) or by popularity."""
    names = [dataset]
    hops = row.get("hops")
    if isinstance(hops, int) and hops >= 2:
        names.append(f"{dataset}_2hop")
    elif row.get("popularity") in ("popular", "longtail"):
        names.append(f"{dataset}_{row['popularity']}")
    return names


def evaluate_agent(model, tokenizer, retriever: SearchBackend, qa_file: str | Path, method: str,
                   settings: AgentSettings, max_examples: int | None = None) -> tuple[list[dict], list[dict]]:
    """-> (results rows, per-question predictions)."""
    records = read_jsonl(qa_file, required=["question", "answer"])[: max_examples or None]
    agent = GripAgent.from_model(model, tokenizer, retriever, settings)
    episodes = agent.run([r["question"] for r in records])
    dataset, split = dataset_and_split(qa_file)
    groups: dict[str, list[dict]] = {}
    preds = []
    for rec, ep in zip(records, episodes, strict=True):
        golds = rec["answer"] if isinstance(rec["answer"], list) else [rec["answer"]]
        scores = {m: ANSWER_METRICS[m](ep.answer, golds) for m in METRICS}
        scores["avg_retrievals"] = float(ep.n_retrievals)
        preds.append({**ep.to_json(), "golds": golds, **scores, "method": method})
        for name in subsets(rec, dataset):
            groups.setdefault(name, []).append(scores)
    rows = [{"method": method, "dataset": name, "split": split, "metric": m,
             "value": round(statistics.fmean(s[m] for s in groups[name]), 4), "n": len(groups[name])}
            for name in sorted(groups, key=lambda s: (s != dataset, s)) for m in (*METRICS, "avg_retrievals")]
    return rows, preds
