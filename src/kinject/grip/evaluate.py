"""`kinject grip eval | answer | bench`: the GRIP agent over a question file.

`eval` writes `results.jsonl` (method `grip`; metrics em, f1, cover_em, rouge when the metric
registry has it, avg_retrievals; datasets `<dataset>` and its world subsets `_popular`,
`_longtail`, `_2hop`), `predictions.jsonl` with every step (turns, queries, retrieved ids) and a
manifest. With `base_model` set, the closed-book base (method `base`) and RAG k (method
`rag_k{k}`, `kinject.retrieval.rag`) answer the same questions and are scored on the same
subsets, so one run gives the GRIP paper's comparison.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from kinject.eval.data import Question, load_questions
from kinject.eval.metrics import ANSWER_METRICS
from kinject.eval.results import ResultRow, metric_rows
from kinject.grip.agent import AgentSettings, Episode, GripAgent
from kinject.grip.data import subset_names

WANTED_METRICS = ("em", "f1", "cover_em", "rouge")


def answer_metrics() -> list[str]:
    """The wanted metrics the registry has (rouge arrives with the eval package's registry)."""
    return [m for m in WANTED_METRICS if m in ANSWER_METRICS]


def settings_of(cfg) -> AgentSettings:
    a = cfg.agent
    return AgentSettings(max_rounds=a.max_rounds, top_k=a.top_k, max_new_tokens=a.max_new_tokens,
                         batch_size=a.batch_size, control_tokens=a.control_tokens,
                         first_query=a.first_query)


def load_agent(cfg, retriever):
    from kinject.grip.agent import check_control_tokens
    from kinject.models import check_model_dir, load_causal_lm, load_tokenizer

    check_model_dir(cfg.model, need_tokenizer=True)
    tok = load_tokenizer(cfg.model)
    if cfg.agent.control_tokens == "special":
        check_control_tokens(tok)  # before loading weights: a non-GRIP model fails fast and quietly
    model, _ = load_causal_lm(cfg.model, device=cfg.device, dtype=cfg.dtype, with_tokenizer=False)
    return GripAgent.from_model(model, tok, retriever, settings_of(cfg)), model, tok


def subset_rows(method: str, qas: Sequence[Question], scores: Mapping[str, Sequence[float]], dataset: str,
                split: str, ndigits: int | None = None) -> list[ResultRow]:
    """The mean of each per-question score on `dataset` and on each of its world subsets."""
    subsets: dict[str, list[int]] = {}
    for i, qa in enumerate(qas):
        for name in subset_names(qa, dataset):
            subsets.setdefault(name, []).append(i)
    rows = []
    for name in sorted(subsets, key=lambda s: (s != dataset, s)):
        idx = subsets[name]
        means = {m: statistics.fmean(vals[i] for i in idx) for m, vals in scores.items()}
        rows += metric_rows(method, name, split, means, len(idx), ndigits)
    return rows


def score_rows(method: str, qas: Sequence[Question], predictions: Sequence[str], dataset: str, split: str,
               retrievals: Sequence[int] | None = None) -> list[ResultRow]:
    """One row per (subset, metric): the answer metrics, then `avg_retrievals` when given."""
    scores = {m: [ANSWER_METRICS[m](p, qa.answers) for p, qa in zip(predictions, qas, strict=True)]
              for m in answer_metrics()}
    if retrievals is not None:
        scores["avg_retrievals"] = list(retrievals)
    return subset_rows(method, qas, scores, dataset, split)


def run_baselines(cfg, qas: Sequence[Question], retriever) -> tuple[list[ResultRow], list[dict]]:
    """Closed-book base and RAG k on the same questions (the GRIP paper's comparison)."""
    from kinject.generation import generate_texts
    from kinject.models import load_causal_lm
    from kinject.prompts import general_messages, render
    from kinject.retrieval.rag import rag_answer

    model, tok = load_causal_lm(cfg.base_model, device=cfg.device, dtype=cfg.dtype)
    questions = [q.question for q in qas]
    gens = generate_texts(model, tok, [render(tok, general_messages(q)) for q in questions],
                          cfg.baseline_max_new_tokens, cfg.agent.batch_size)
    preds = {"base": [g.text for g in gens]}
    if cfg.rag_k:
        hits = retriever.batch_search(questions, max(cfg.rag_k))
        for k in sorted(cfg.rag_k):
            outs = rag_answer(model, tok, retriever, questions, k, cfg.baseline_max_new_tokens,
                              cfg.agent.batch_size, hits=hits)
            preds[f"rag_k{k}"] = [o.answer for o in outs]
    rows, pred_rows = [], []
    for method, ps in preds.items():
        rows += score_rows(method, qas, ps, cfg.dataset, cfg.split,
                           [0] * len(qas) if method == "base" else [1] * len(qas))
        pred_rows += [{"method": method, "question": q.question, "answer": q.answers, "prediction": p}
                      for q, p in zip(qas, ps, strict=True)]
    return rows, pred_rows


def episode_row(qa: Question, ep: Episode) -> dict:
    row = ep.to_json()
    row.update({"method": "grip", "answer": qa.answers,
                **{k: qa.row[k] for k in ("hops", "popularity") if k in qa.row}})
    return row


def grip_eval(cfg, data: str | Path | None, out: str | Path) -> list[ResultRow]:
    import torch

    from kinject.errors import UserError
    from kinject.eval.results import read_results, write_results
    from kinject.io import atomic_dir, write_jsonl_atomic
    from kinject.retrieval.base import open_index
    from kinject.runs import RunRecorder, inputs_hash, is_complete

    data = data or cfg.data
    if not data:
        raise UserError("grip eval: give the questions with --data FILE (or `data:` in the config)")
    out = Path(out)
    qas = load_questions(data, limit=cfg.limit or None)
    files = [Path(data), Path(cfg.index) / "kinject-index.json", Path(cfg.model)]
    if cfg.base_model:
        files.append(Path(cfg.base_model))
    h = inputs_hash({"cfg": cfg.model_dump(mode="json"), "data": str(data)}, *files)
    if is_complete(out, h) and (out / "results.jsonl").is_file():
        return read_results(out)
    torch.set_num_threads(cfg.threads)
    rec = RunRecorder(out, "grip eval", cfg, cfg.seed)
    with open_index(cfg.index, cfg.backend) as retriever:
        with rec.timer("load"):
            agent, _, _ = load_agent(cfg, retriever)
        t0 = time.perf_counter()
        with rec.timer("agent"):
            episodes = agent.run([q.question for q in qas])
        elapsed = time.perf_counter() - t0
        results = score_rows("grip", qas, [e.answer for e in episodes], cfg.dataset, cfg.split,
                             [e.n_retrievals for e in episodes])
        preds = [episode_row(q, e) for q, e in zip(qas, episodes, strict=True)]
        if cfg.base_model:
            with rec.timer("baselines"):
                b_rows, b_preds = run_baselines(cfg, qas, retriever)
            results += b_rows
            preds += b_preds
    rec.metrics = {f"{r.method}/{r.dataset}/{r.metric}": r.value for r in results}
    rec.metrics["grip/questions_per_s"] = len(qas) / max(elapsed, 1e-9)
    rec.extra["metrics_missing"] = [m for m in WANTED_METRICS if m not in answer_metrics()]
    rec.extra["empty_retrievals"] = sum(s.empty_retrieval for e in episodes for s in e.steps)
    with atomic_dir(out) as tmp:
        write_results(tmp / "results.jsonl", results, append=False)
        write_jsonl_atomic(tmp / "predictions.jsonl", preds)
        rec.write(tmp, inputs_hash=h)
    return results


def grip_bench(cfg, data: str | Path | None, out: str | Path, n: int = 64) -> dict:
    """Agent questions/s, batched (`agent.batch_size`) vs one question at a time."""
    import torch

    from kinject.errors import UserError
    from kinject.io import write_json_atomic
    from kinject.retrieval.base import open_index

    data = data or cfg.data
    if not data:
        raise UserError("grip bench: give the questions with --data FILE")
    torch.set_num_threads(cfg.threads)
    qs = [q.question for q in load_questions(data, limit=n)]
    res: dict = {"command": "kinject grip bench", "questions": len(qs), "threads": cfg.threads,
                 "batch_size": cfg.agent.batch_size}
    with open_index(cfg.index, cfg.backend) as retriever:
        agent, _, _ = load_agent(cfg, retriever)
        agent.run(qs[:2])  # warm-up
        for mode in ("batched", "one_at_a_time"):
            agent.cache.clear()
            t0 = time.perf_counter()
            if mode == "batched":
                eps = agent.run(qs)
            else:
                eps = [e for q in qs for e in agent.run([q])]
            dt = time.perf_counter() - t0
            res[mode] = {"seconds": dt, "questions_per_s": len(qs) / dt,
                         "avg_retrievals": statistics.fmean(e.n_retrievals for e in eps),
                         "answers": [e.answer for e in eps]}
    res["speedup"] = res["batched"]["questions_per_s"] / res["one_at_a_time"]["questions_per_s"]
    res["same_answers"] = res["batched"].pop("answers") == res["one_at_a_time"].pop("answers")
    write_json_atomic(Path(out) / "bench.json", res)
    return res
