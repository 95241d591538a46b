"""Evaluate a GRIP checkpoint with the inference loop (greedy) on QA files: EM, F1, avg retrievals.

Used by `kinject grip rl` to compare the SFT start (`grip`) with the RL result (`grip_rl`) on the
same questions; rows follow the one `results.jsonl` schema.
"""

from __future__ import annotations

from pathlib import Path

from kinject.eval.metrics import exact_match, f1_score
from kinject.grip.agent import AgentSettings, GripAgent, SearchBackend
from kinject.io import read_jsonl


def dataset_and_split(path: str | Path) -> tuple[str, str]:
    """`.../wiki/qa_test.jsonl` -> ("wiki", "qa_test")."""
    p = Path(path)
    return p.parent.name, p.stem


def evaluate_agent(model, tokenizer, retriever: SearchBackend, qa_file: str | Path, method: str,
                   settings: AgentSettings, max_examples: int | None = None) -> tuple[list[dict], list[dict]]:
    """-> (results rows, per-question predictions)."""
    records = read_jsonl(qa_file, required=["question", "answer"])[: max_examples or None]
    agent = GripAgent.from_model(model, tokenizer, retriever, settings)
    episodes = agent.run([r["question"] for r in records])
    preds, em, f1, nret = [], 0.0, 0.0, 0
    for rec, ep in zip(records, episodes, strict=True):
        golds = rec["answer"] if isinstance(rec["answer"], list) else [rec["answer"]]
        e, f = exact_match(ep.answer, golds), f1_score(ep.answer, golds)
        em, f1, nret = em + e, f1 + f, nret + ep.n_retrievals
        preds.append({**ep.to_json(), "golds": golds, "em": e, "f1": f, "method": method})
    n = len(records)
    dataset, split = dataset_and_split(qa_file)
    rows = [{"method": method, "dataset": dataset, "split": split, "metric": metric, "value": round(v / n, 4), "n": n}
            for metric, v in (("em", em), ("f1", f1), ("avg_retrievals", nret))]
    return rows, preds
