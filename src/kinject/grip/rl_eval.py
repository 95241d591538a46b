"""Evaluate a GRIP checkpoint with the inference loop (greedy) on QA files: EM, F1, cover-EM,
average retrievals; on the whole file and on the world subsets (`_popular`, `_longtail`, `_2hop`),
named as the GRIP eval names them so `grip` / `grip_rl` rows line up with `kinject grip eval`.

Used by `kinject grip rl` to compare the SFT start (`grip`) with the RL result (`grip_rl`) on the
same questions; rows follow the one `results.jsonl` schema.
"""

from __future__ import annotations

from pathlib import Path

from kinject.eval.data import load_questions
from kinject.eval.metrics import ANSWER_METRICS
from kinject.eval.results import ResultRow
from kinject.grip.agent import AgentSettings, GripAgent, SearchBackend
from kinject.grip.evaluate import subset_rows

METRICS = ("em", "f1", "cover_em")


def dataset_and_split(path: str | Path) -> tuple[str, str]:
    """`.../wiki/qa_test.jsonl` -> ("wiki", "test")."""
    p = Path(path)
    return p.parent.name, p.stem.removeprefix("qa_")


def evaluate_agent(model, tokenizer, retriever: SearchBackend, qa_file: str | Path, method: str,
                   settings: AgentSettings, max_examples: int | None = None) -> tuple[list[ResultRow], list[dict]]:
    """-> (results rows, per-question predictions)."""
    qas = load_questions(qa_file, limit=max_examples or None)
    agent = GripAgent.from_model(model, tokenizer, retriever, settings)
    episodes = agent.run([q.question for q in qas])
    dataset, split = dataset_and_split(qa_file)
    scores: dict[str, list[float]] = {m: [] for m in (*METRICS, "avg_retrievals")}
    preds = []
    for qa, ep in zip(qas, episodes, strict=True):
        one = {m: ANSWER_METRICS[m](ep.answer, qa.answers) for m in METRICS}
        one["avg_retrievals"] = float(ep.n_retrievals)
        preds.append({**ep.to_json(), "golds": qa.answers, **one, "method": method})
        for m, v in one.items():
            scores[m].append(v)
    return subset_rows(method, qas, scores, dataset, split, ndigits=4), preds
