"""Pattern A-D training turns for GRIP (the GRIP paper's training data), from `{question, answer}`.

A closed-book pass of the reference model (the base, greedy, `prompts.general_messages`)
classifies every question by its prediction (SQuAD normalization, `kinject.eval.metrics`):
- **A** (EM with a gold): empty slots -> `[ANSWER] gold [SOLVED]`.
- **B** (gold contained, not EM): empty slots -> `[INTERMEDIARY] prediction [RETRIEVE] question`.
  With `wrong_as_b` (default) a wrong prediction also gets this round-0 turn (reported apart as
  `B/wrong`): the release's C and D rows start from slots filled with the prediction and the
  question's passages, i.e. after exactly this turn, so without it the model never sees the
  empty-slot state of a question it does not know (and a tiny model does not infer it).
- **C** (wrong, and the question's top-k passages lack a gold): slots = prediction + passages;
  target = a corrected fact and a NEW query from the rewriter (`world` or `openai`).
- **D** (the passages in the slots contain a gold): target `[ANSWER] gold [SOLVED]`. Built for
  the question's own passages (round 1) and, after a C turn, for the passages of the new query
  (round 2: the second hop of a 2-hop question), so every state the agent reaches has a target.

Every prompt is `format.round_messages` (the one renderer), queries go through
`format.clean_query` and passages are hit bodies, exactly as the agent does at inference.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kinject.errors import UserError
from kinject.eval.data import Question, load_questions
from kinject.eval.metrics import cover_em, exact_match, has_answer
from kinject.grip.format import clean_query, final_turn, plan_turn, round_messages
from kinject.grip.rewriters import RewriteItem, make_rewriter

CLASSES = ("A", "B", "C", "D")


@dataclass
class Example:
    cls: str
    qa: Question
    prediction: str
    intermediary: str
    references: list[str]
    reference_ids: list[str]
    target: str
    round: int
    note: str = ""

    def to_json(self, idx: str) -> dict:
        return {
            "id": idx, "class": self.cls, "round": self.round, "note": self.note,
            "question": self.qa.question, "answer": self.qa.answers,
            "intermediary": self.intermediary, "references": self.references,
            "reference_ids": self.reference_ids, "target": self.target,
            "prediction": self.prediction,
            **{k: self.qa.row[k] for k in ("hops", "popularity") if k in self.qa.row},
        }


def example_messages(row: dict) -> list[dict]:
    """The prompt of a synthesized row (what SFT and RL train on, what the agent shows)."""
    return round_messages(row["question"], row["intermediary"], row["references"])


def closed_book(model, tok, questions: Sequence[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy closed-book answers (`general_messages`), with a progress bar."""
    from rich.progress import Progress

    from kinject.generation import generate_texts
    from kinject.prompts import general_messages, render

    prompts = [render(tok, general_messages(q)) for q in questions]
    out: list[str] = []
    step = batch_size * 4
    with Progress(transient=True) as bar:
        task = bar.add_task("closed-book pass", total=len(prompts))
        for i in range(0, len(prompts), step):
            gens = generate_texts(model, tok, prompts[i : i + step], max_new_tokens, batch_size)
            out += [g.text for g in gens]
            bar.advance(task, len(gens))
    return out


def contains_gold(passages: Sequence[str], golds: Sequence[str]) -> bool:
    return any(has_answer(p, golds) for p in passages)


def classify(prediction: str, golds: Sequence[str]) -> str:
    """A if EM, B if the gold is contained (cover-EM) but not EM, else C (the GRIP paper)."""
    if exact_match(prediction, golds):
        return "A"
    if cover_em(prediction, golds):
        return "B"
    return "C"


def build_examples(qas: Sequence[Question], predictions: Sequence[str], search, rewriter,
                   wrong_as_b: bool = True) -> tuple[list[Example], Counter]:
    """All rows for the questions; `search(queries) -> [[Hit]]` (cleaned queries, top-k)."""
    stats: Counter = Counter()
    rows: list[Example] = []
    hits = search([clean_query(q.question) or q.question for q in qas])
    to_rewrite: list[tuple[Question, str, list]] = []
    for qa, pred, hs in zip(qas, predictions, hits, strict=True):
        cls = classify(pred, qa.answers)
        stats[f"closed_book_{cls}"] += 1
        refs, ids = [h.text for h in hs], [str(h.id) for h in hs]
        if cls == "A":
            rows.append(Example("A", qa, pred, "", [], [], final_turn(qa.answers[0]), 0))
        elif cls == "B" or wrong_as_b:
            note = "contained" if cls == "B" else "wrong"
            rows.append(Example("B", qa, pred, "", [], [], plan_turn(pred, qa.question), 0, note))
        if contains_gold(refs, qa.answers):
            rows.append(Example("D", qa, pred, pred, refs, ids, final_turn(qa.answers[0]), 1, "question"))
        elif cls != "A":
            to_rewrite.append((qa, pred, hs))
    items = [RewriteItem(qa.question, qa.answers, pred, [h.text for h in hs], qa.row) for qa, pred, hs in to_rewrite]
    written = rewriter(items) if items else []
    follow: list[tuple[Question, str]] = []
    for (qa, pred, hs), res in zip(to_rewrite, written, strict=True):
        if res is None:
            stats["C_unwritable"] += 1
            continue
        fact, query = res
        rows.append(Example("C", qa, pred, pred, [h.text for h in hs], [str(h.id) for h in hs],
                            plan_turn(fact, query), 1))
        follow.append((qa, fact, clean_query(query) or clean_query(qa.question)))
    if follow:
        for (qa, fact, _), hs in zip(follow, search([q for _, _, q in follow]), strict=True):
            refs = [h.text for h in hs]
            if contains_gold(refs, qa.answers):
                rows.append(Example("D", qa, "", fact, refs, [str(h.id) for h in hs],
                                    final_turn(qa.answers[0]), 2, "after_C"))
            else:
                stats["C_followup_miss"] += 1
    return rows, stats


def split_rows(rows: list[Example], rl_fraction: float, max_per_class: int | None, seed: int):
    """Per class: shuffle (seeded), cap at `max_per_class`, the first `rl_fraction` to RL."""
    rng = random.Random(seed)
    sft, rl = [], []
    counts: dict[str, dict[str, int]] = {}
    for cls in CLASSES:
        mine = [r for r in rows if r.cls == cls]
        rng.shuffle(mine)
        if max_per_class is not None:
            mine = mine[:max_per_class]
        n_rl = round(len(mine) * rl_fraction)
        rl += mine[:n_rl]
        sft += mine[n_rl:]
        counts[cls] = {"total": len(mine), "sft": len(mine) - n_rl, "rl": n_rl}
    rng.shuffle(sft)
    return sft, rl, counts


def without_eval_questions(qas: list[Question], eval_configs: Sequence[str]) -> tuple[list[Question], int]:
    """`qas` minus every question an eval config's datasets evaluate (matched by `id` when both
    have one, else by question text), with the number left out. The datasets are prepared as
    the harness prepares them (`where`, `limit`, seeded `sample`), so this is exactly its test set."""
    if not eval_configs:
        return qas, 0
    from kinject.config import load_config
    from kinject.eval.config import EvalConfig
    from kinject.eval.harness import prepare_datasets

    ids: set[str] = set()
    texts: set[str] = set()
    for f in eval_configs:
        if not Path(f).is_file():
            raise UserError(f"grip synth: exclude_eval: config not found: {f}")
        for d in prepare_datasets(load_config(f, expect=EvalConfig), f):
            ids.update(q.id for q in d.questions if q.id)
            texts.update(q.question for q in d.questions)
    kept = [q for q in qas if not (q.id in ids if q.id else q.question in texts)]
    return kept, len(qas) - len(kept)


def synthesize(cfg, out: str | Path | None = None) -> dict:
    """Run `kinject grip synth`; returns the manifest metrics (per-class counts...)."""
    import json

    from kinject.io import atomic_dir, write_jsonl_atomic
    from kinject.models import load_causal_lm
    from kinject.retrieval.base import open_index
    from kinject.runs import RunRecorder, inputs_hash, is_complete

    out = Path(out or cfg.out)
    if not cfg.questions:
        raise UserError("grip synth: `questions` lists no file")
    files = [Path(f) for f in cfg.questions]
    qas = [qa for f in files for qa in load_questions(f)]
    qas, n_excluded = without_eval_questions(qas, cfg.exclude_eval)
    if cfg.limit:
        qas = qas[: cfg.limit]
    if not qas:
        raise UserError("grip synth: no question left to synthesize from"
                        + (f" ({n_excluded} are evaluated by exclude_eval)" if n_excluded else ""))
    h = inputs_hash(cfg, *files, *cfg.exclude_eval, Path(cfg.index) / "kinject-index.json", cfg.model)
    if is_complete(out, h):
        return json.loads((out / "manifest.json").read_text())["metrics"]
    import torch

    torch.set_num_threads(cfg.threads)
    rec = RunRecorder(out, "grip synth", cfg, cfg.seed)
    rewriter = make_rewriter(cfg.rewriter)
    with rec.timer("load"):
        model, tok = load_causal_lm(cfg.model, device=cfg.device, dtype=cfg.dtype)
        retriever = open_index(cfg.index, cfg.backend)
    with rec.timer("closed_book"):
        preds = closed_book(model, tok, [q.question for q in qas], cfg.max_new_tokens, cfg.batch_size)
    with retriever, rec.timer("build"):
        rows, stats = build_examples(qas, preds, lambda qs: retriever.batch_search(qs, cfg.top_k),
                                     rewriter, cfg.wrong_as_b)
    sft, rl, counts = split_rows(rows, cfg.rl_fraction, cfg.max_per_class, cfg.seed)
    notes = Counter(f"{r.cls}/{r.note}" for r in rows if r.note)
    rec.metrics = {"questions": len(qas), "excluded_eval_questions": n_excluded, "classes": counts, "notes": dict(sorted(notes.items())),
                   "stats": dict(sorted(stats.items())), "sft_rows": len(sft), "rl_rows": len(rl),
                   "closed_book_em": stats["closed_book_A"] / len(qas)}
    missing = [c for c in CLASSES if counts[c]["total"] == 0]
    if missing:
        rec.extra["warning"] = f"no rows for class(es) {', '.join(missing)}"
    with atomic_dir(out) as tmp:
        write_jsonl_atomic(tmp / "sft.jsonl", (r.to_json(f"{i}") for i, r in enumerate(sft)))
        write_jsonl_atomic(tmp / "rl.jsonl", (r.to_json(f"rl{i}") for i, r in enumerate(rl)))
        write_jsonl_atomic(tmp / "closed_book.jsonl",
                           ({"question": q.question, "answer": q.answers, "prediction": p,
                             "class": classify(p, q.answers)} for q, p in zip(qas, preds, strict=True)))
        rec.write(tmp, inputs_hash=h)
    return rec.metrics
