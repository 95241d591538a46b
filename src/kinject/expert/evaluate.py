"""Ask the expert (greedy) and score it on QA files: EM, F1, has_answer -> `results.jsonl`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from kinject.errors import UserError
from kinject.eval.metrics import ANSWER_METRICS
from kinject.io import write_jsonl_atomic
from kinject.prompts import expert_messages

METRICS = {k: ANSWER_METRICS[k] for k in ("em", "f1", "has_answer")}


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


def score(predictions: Sequence[str], rows: Sequence[dict]) -> dict[str, float]:
    out = {}
    for name, fn in METRICS.items():
        vals = [fn(p, _golds(r)) for p, r in zip(predictions, rows, strict=True)]
        out[name] = sum(vals) / len(vals) if vals else 0.0
    return out


def _golds(row: dict) -> list[str]:
    ans = row.get("answer")
    if isinstance(ans, list) and ans:
        return [str(a) for a in ans]
    return [str(row["output"])]


def evaluate_files(
    model_dir: str | Path,
    files: dict[str, str | Path],
    out: str | Path,
    method: str = "expert",
    max_new_tokens: int = 32,
    batch_size: int = 32,
    limit: int | None = None,
) -> list[dict]:
    """Score the expert on each split file; write results.jsonl and predictions per split."""
    from kinject.io import read_jsonl
    from kinject.models import load_causal_lm

    loaded = {}
    for split, path in files.items():
        rows = read_jsonl(path, required=["instruction", "input", "output"])
        loaded[split] = rows[:limit] if limit else rows
    model, tok = load_causal_lm(model_dir)
    results, out = [], Path(out)
    for split, rows in loaded.items():
        preds = answer(model, tok, [(r["instruction"], r["input"]) for r in rows], max_new_tokens, batch_size)
        dataset = rows[0].get("domain") or Path(files[split]).parent.name
        for metric, value in score(preds, rows).items():
            results.append({"method": method, "dataset": dataset, "split": split, "metric": metric,
                            "value": round(value, 4), "n": len(rows)})
        write_jsonl_atomic(out / "predictions" / f"{method}__{dataset}__{split}.jsonl", (
            {"id": r.get("id"), "question": r["input"], "prediction": p, "answer": _golds(r)}
            for r, p in zip(rows, preds, strict=True)
        ))
    if not results:
        raise UserError("no QA files to evaluate")
    write_jsonl_atomic(out / "results.jsonl", results)
    return results
