"""Quality bars of the foundation models, measured with the shared prompts, decoder
and metrics. Writes `results.jsonl` (one row per number) and `bars.json`.

Bars (base): closed-book popular public facts, seen wordings, EM >= 0.8; reading
comprehension (fresh entity, passage in context) EM >= 0.8; closed-book private dev EM <= 0.05.
Reported without a bar: held-out wordings, the gold-sentence-in-context ceiling on private dev
questions (what RAG/GAG can at best reach with this base), long-tail closed-book, expert init.
"""

from __future__ import annotations

import random
from pathlib import Path

from kinject.io import iter_jsonl, require_dir, write_json_atomic
from kinject.log import get_logger

log = get_logger(__name__)

BARS = {
    "closed_book_seen": (">=", 0.8),
    "reading": (">=", 0.8),
    "private_dev_closed_book": ("<=", 0.05),
}


def _sample(rows: list[dict], n: int, seed: int = 0) -> list[dict]:
    if len(rows) <= n:
        return rows
    return random.Random(seed).sample(rows, n)


def quality_sets(world: Path, n: int) -> dict[str, list[tuple[str, list[dict], list[str]]]]:
    """name -> [(kind, messages, answers)] for every measured test."""
    from kinject.prompts import general_messages, knowledge_messages
    from kinject.world.checks import load_specs

    w = require_dir(world, "world directory")
    qa = list(iter_jsonl(w / "general/qa_test.jsonl"))
    rd = list(iter_jsonl(w / "general/reading_dev.jsonl"))
    specs = load_specs(w)
    private_types = {et.name for d in specs if d.private for et in d.entity_types}
    priv = []
    for d in specs:
        if d.private:
            priv += list(iter_jsonl(w / f"{d.name}_domain/qa_dev.jsonl"))
    wiki = [r for r in iter_jsonl(w / "wiki/qa_test.jsonl") if r["hops"] == 1 and r["popularity"] == "longtail"]
    sets = {
        "closed_book_seen": [(general_messages(r["question"]), r["answer"]) for r in _sample([r for r in qa if r["wording"] == "seen"], n)],
        "closed_book_heldout": [(general_messages(r["question"]), r["answer"])
                                for r in _sample([r for r in qa if r["wording"] == "heldout"], n)],
        "reading": [(knowledge_messages(r["question"], r["knowledge"]), r["answer"]) for r in _sample(rd, n)],
        "reading_private_style": [(knowledge_messages(r["question"], r["knowledge"]), r["answer"])
                                  for r in _sample([r for r in rd if r["type"] in private_types], n)],
        "private_dev_closed_book": [(general_messages(r["input"]), r["answer"]) for r in _sample(priv, n)],
        "private_dev_gold_context": [(knowledge_messages(r["input"], r["background"]), r["answer"])
                                     for r in _sample(priv, n)],
        "wiki_longtail_closed_book": [(general_messages(r["question"]), r["answer"]) for r in _sample(wiki, n)],
    }
    return sets


def evaluate(model, tok, sets: dict, batch_size: int = 64) -> dict[str, dict]:
    from kinject.eval.metrics import exact_match, f1_score
    from kinject.generation import generate_texts
    from kinject.prompts import render

    out = {}
    for name, items in sets.items():
        prompts = [render(tok, m) for m, _ in items]
        gens = generate_texts(model, tok, prompts, max_new_tokens=16, batch_size=batch_size)
        em = [exact_match(g.text, a) for g, (_, a) in zip(gens, items)]
        f1 = [f1_score(g.text, a) for g, (_, a) in zip(gens, items)]
        out[name] = {"em": sum(em) / max(1, len(em)), "f1": sum(f1) / max(1, len(f1)), "n": len(items),
                     "examples": [{"prompt": p[-160:], "prediction": g.text, "answer": a}
                                  for p, g, (_, a) in list(zip(prompts, gens, items))[:3]]}
    return out


def check_bars(scores: dict[str, dict]) -> dict[str, dict]:
    bars = {}
    for name, (op, thr) in BARS.items():
        v = scores[name]["em"]
        bars[name] = {"em": round(v, 4), "bar": f"{op} {thr}", "pass": v >= thr if op == ">=" else v <= thr}
    return bars


def measure_quality(foundation: str | Path, world: str | Path, out: str | Path, n: int = 300,
                    models: tuple[str, ...] = ("base", "expert_init")) -> dict:
    import torch

    from kinject.eval.results import metric_rows, print_results, write_results
    from kinject.models import load_causal_lm

    torch.set_num_threads(min(2, torch.get_num_threads()))
    f = require_dir(foundation, "foundation directory", "run `kinject world pretrain` or use assets/foundation/tiny")
    sets = quality_sets(Path(world), n)
    rows, report = [], {}
    for name in models:
        model, tok = load_causal_lm(f / name, device="cpu")
        scores = evaluate(model, tok, sets)
        report[name] = scores
        for test, s in scores.items():
            rows += metric_rows(name, "world", test, {m: s[m] for m in ("em", "f1")}, s["n"], ndigits=4)
    bars = check_bars(report["base"]) if "base" in report else {}
    out = Path(out)
    write_results(out / "results.jsonl", rows, append=False)
    write_json_atomic(out / "bars.json", {"foundation": str(f), "world": str(world), "n": n, "bars": bars,
                                          "scores": report})
    print_results([r for r in rows if r.metric == "em"], title=f"foundation quality: EM, up to {n} questions per test")
    for k, b in bars.items():
        log.info(f"bar {k}: {b['em']:.3f} {b['bar']} -> {'PASS' if b['pass'] else 'FAIL'}")
    return {"bars": bars, "scores": report}
