"""The RAG baseline: retrieve top-k passages, put them in the base model's knowledge prompt
(`kinject.prompts.knowledge_messages`, the format GAG and text injection share), and answer
with batched greedy decoding (`kinject.generation.generate_texts`, left padding).

Passages are formatted by `format_passages` only: one line per passage, `[i] title: text`
(style "numbered", the default), or the bodies joined by spaces (style "plain": the shape of
the tiny world's reading-comprehension examples, whose knowledge is plain sentences).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kinject.errors import UserError
from kinject.eval.metrics import ANSWER_METRICS
from kinject.eval.results import ResultRow, metric_rows, read_results, write_results
from kinject.prompts import general_messages, knowledge_messages, render
from kinject.retrieval.base import BaseRetriever, Hit

METRICS = ("em", "f1", "has_answer")


PASSAGE_STYLES = ("numbered", "plain")


def format_passages(hits: Sequence[Hit], style: str = "numbered") -> str:
    """`[1] title: text` lines (`[1] text` when a passage has no title), or plain bodies."""
    if style == "plain":
        return " ".join(" ".join(h.text.split()) for h in hits)
    if style != "numbered":
        raise UserError(f"unknown passage style {style!r}; choose one of {', '.join(PASSAGE_STYLES)}")
    lines = []
    for i, h in enumerate(hits, 1):
        body = " ".join(h.text.split())
        lines.append(f"[{i}] {h.title}: {body}" if h.title else f"[{i}] {body}")
    return "\n".join(lines)


def rag_messages(question: str, hits: Sequence[Hit], instruction: str = "", style: str = "numbered",
                 answer_format: str = "") -> list[dict]:
    return knowledge_messages(question, format_passages(hits, style), instruction, answer_format)


@dataclass
class RagOutput:
    question: str
    hits: list[Hit]
    prompt: str
    answer: str
    n_prompt_tokens: int = 0
    n_new_tokens: int = 0


def rag_answer(
    model, tokenizer, retriever: BaseRetriever, questions: Sequence[str], k: int,
    max_new_tokens: int = 32, batch_size: int = 16, instruction: str = "",
    hits: Sequence[Sequence[Hit]] | None = None, style: str = "plain", answer_format: str = "",
) -> list[RagOutput]:
    """Answer each question from its top-k passages (pass `hits` to reuse a retrieval)."""
    from kinject.generation import generate_texts

    if hits is None:
        hits = retriever.batch_search(list(questions), k)
    hits = [list(h[:k]) for h in hits]
    prompts = [render(tokenizer, rag_messages(q, h, instruction, style, answer_format)) for q, h in zip(questions, hits, strict=True)]
    gens = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [
        RagOutput(q, h, p, g.text, g.n_prompt_tokens, g.n_new_tokens)
        for q, h, p, g in zip(questions, hits, prompts, gens, strict=True)
    ]


def recall_at_k(hits: Sequence[Hit], gold_ids: Sequence[str], k: int) -> float:
    """Share of the gold passages found in the top k (1-hop: 1 or 0). A chunk `doc#n` counts
    for its document `doc`."""
    found = {h.id for h in hits[:k]} | {h.id.rsplit("#", 1)[0] for h in hits[:k]}
    gold = {str(g) for g in gold_ids}
    return len(gold & found) / len(gold) if gold else 0.0


def rag_eval(cfg, out: Path, progress: bool = True) -> list[ResultRow]:
    """Run the RAG baseline for each k in `cfg.ks`; write results.jsonl, predictions.jsonl, manifest."""
    from kinject.eval.data import load_questions
    from kinject.io import atomic_dir, require_file, write_jsonl_atomic
    from kinject.models import load_causal_lm
    from kinject.retrieval.base import open_index
    from kinject.runs import RunRecorder, inputs_hash, is_complete

    qpath = require_file(cfg.questions, "questions file")
    qas = load_questions(qpath, cfg.where or None, cfg.limit or None)  # `where` and `limit` as in the harness
    questions, golds = [q.question for q in qas], [q.answers for q in qas]
    dataset = cfg.dataset or qpath.stem
    h = inputs_hash(cfg, qpath, Path(cfg.index) / "kinject-index.json", Path(cfg.model))
    if is_complete(out, h) and (out / "results.jsonl").is_file():
        return read_results(out)

    rec = RunRecorder(out, "rag eval", cfg, cfg.seed)
    with rec.timer("load"):
        model, tok = load_causal_lm(cfg.model, device=cfg.device, dtype=cfg.dtype)
        retriever = open_index(cfg.index, cfg.backend)
    kmax = max(cfg.ks)
    results: list[ResultRow] = []
    with retriever, rec.timer("retrieve"):
        all_hits = retriever.batch_search(questions, kmax)
    with_gold = [(hs, q.row[cfg.gold_field]) for hs, q in zip(all_hits, qas) if isinstance(q.row.get(cfg.gold_field), list)]
    if with_gold:
        recall = {f"recall@{k}": sum(recall_at_k(hs, g, k) for hs, g in with_gold) / len(with_gold)
                  for k in sorted(cfg.ks)}
        results += metric_rows(f"retrieval_{retriever.name}", dataset, cfg.split, recall, len(with_gold))
    closed = [len(tok(render(tok, general_messages(q)), add_special_tokens=False)["input_ids"]) for q in questions]
    preds = []
    for k in sorted(cfg.ks):
        method = f"rag_k{k}"
        with rec.timer(f"generate_k{k}"):
            outs = rag_answer(model, tok, retriever, questions, k, cfg.max_new_tokens, cfg.batch_size,
                              cfg.instruction, hits=all_hits, style=cfg.passage_format)
        values = {m: sum(ANSWER_METRICS[m](o.answer, g) for o, g in zip(outs, golds)) / len(outs) for m in METRICS}
        values["added_prompt_tokens"] = statistics.fmean(o.n_prompt_tokens - c for o, c in zip(outs, closed))
        results += metric_rows(method, dataset, cfg.split, values, len(outs))
        for o, g in zip(outs, golds):
            preds.append({"method": method, "question": o.question, "answer": g, "prediction": o.answer,
                          "hits": [h.id for h in o.hits]})
    rec.metrics = {f"{r.method}/{r.metric}": r.value for r in results}
    with atomic_dir(out) as tmp:
        write_results(tmp / "results.jsonl", results, append=False)
        write_jsonl_atomic(tmp / "predictions.jsonl", preds)
        rec.write(tmp, inputs_hash=h)
    return results
