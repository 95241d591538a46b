"""Ask the expert (greedy) and score it on QA files: EM, F1, has_answer -> `results.jsonl`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from kinject.errors import UserError
from kinject.eval.data import Question
from kinject.eval.metrics import ANSWER_METRICS
from kinject.eval.results import ResultRow
from kinject.io import write_jsonl_atomic
from kinject.prompts import expert_messages

METRICS = ("em", "f1", "has_answer")


def expert_prompt(tokenizer, instruction: str, question: str, enable_thinking: bool | None = False) -> str:
    """The Stage II user turn plus the assistant prefix (Qwen3: non-thinking mode).

    `apply_chat_template` is called directly (not `prompts.render`) only to pass
    `enable_thinking`; the messages are `prompts.expert_messages`, as in training.
    """
    kw = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return tokenizer.apply_chat_template(
        expert_messages(instruction, question), tokenize=False, add_generation_prompt=True, **kw
    )


def default_instruction(model_dir: str | Path) -> str:
    """The instruction the expert was fine-tuned with (recorded by `expert sft`), else ''."""
    p = Path(model_dir) / "manifest.json"
    if p.is_file():
        try:
            return json.loads(p.read_text()).get("instruction") or ""
        except json.JSONDecodeError:
            return ""
    return ""


def most_common_instruction(rows: Sequence[dict]) -> str:
    return Counter(r["instruction"] for r in rows).most_common(1)[0][0] if rows else ""


def answer(model, tok, pairs: Sequence[tuple[str, str]], max_new_tokens: int = 32, batch_size: int = 32,
           enable_thinking: bool | None = False) -> list[str]:
    """Greedy answers for (instruction, question) pairs."""
    from kinject.generation import generate_texts

    prompts = [expert_prompt(tok, ins, q, enable_thinking) for ins, q in pairs]
    return [g.text for g in generate_texts(model, tok, prompts, max_new_tokens, batch_size)]


def score(predictions: Sequence[str], questions: Sequence[Question]) -> dict[str, float]:
    out = {}
    for name in METRICS:
        vals = [ANSWER_METRICS[name](p, q.answers) for p, q in zip(predictions, questions, strict=True)]
        out[name] = sum(vals) / len(vals) if vals else 0.0
    return out


def evaluate_files(
    model_dir: str | Path,
    files: dict[str, str | Path],
    out: str | Path,
    method: str = "expert",
    max_new_tokens: int = 32,
    batch_size: int = 32,
    limit: int | None = None,
) -> list[ResultRow]:
    """Score the expert on each split file (Stage II rows: instruction, input, answer or output);
    write results.jsonl and predictions per split."""
    from kinject.eval.data import load_questions
    from kinject.eval.results import metric_rows, write_results
    from kinject.models import load_causal_lm

    loaded = {}
    for split, path in files.items():
        loaded[split] = load_questions(path, limit=limit or None)
        no_instruction = next((q for q in loaded[split] if "instruction" not in q.row), None)
        if no_instruction is not None:
            raise UserError(f"{path}: question {no_instruction.question!r} has no 'instruction' (the expert is "
                            "asked with the instruction it was fine-tuned with)")
    model, tok = load_causal_lm(model_dir)
    results, out = [], Path(out)
    for split, qs in loaded.items():
        preds = answer(model, tok, [(q.row["instruction"], q.question) for q in qs], max_new_tokens, batch_size)
        dataset = qs[0].row.get("domain") or Path(files[split]).parent.name
        results += metric_rows(method, dataset, split, score(preds, qs), len(qs), ndigits=4)
        write_jsonl_atomic(out / "predictions" / f"{method}__{dataset}__{split}.jsonl", (
            {"id": q.id, "question": q.question, "prediction": p, "answer": q.answers}
            for q, p in zip(qs, preds, strict=True)
        ))
    if not results:
        raise UserError("no QA files to evaluate")
    write_results(out / "results.jsonl", results, append=False)
    return results
