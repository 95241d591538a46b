"""kinject from Python: GAG answering, PPR routing, retrieval, the GRIP agent and the mixed-domain
pipeline that routes each question to the plain base or to a domain's GAG.

    python examples/quickstart.py                        # tiny random models built here (seconds)
    python examples/quickstart.py --models outputs/demo  # the models `make demo` trained

Without `--models` the models are tiny and random (a real architecture with random weights, as
`kinject bench` uses them): every call runs for real, but the answers mean nothing. The router
and the index are real either way (the shipped all-MiniLM-L6-v2 encoder, a tantivy index), so
routes and retrieved passages are meaningful in both modes. `--json FILE` writes everything
printed, for scripts and tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import kinject

# ---------------------------------------------------------------- the inputs


@dataclass
class Inputs:
    source: str  # "random" or the --models directory
    base: str  # the frozen base
    experts: dict[str, str]  # domain -> expert dir
    injectors: dict[str, str]  # domain -> injector dir
    instructions: dict[str, str]  # domain -> the base prompt's instruction (the domain's)
    banks: str  # a PPR banks dir: general + every domain
    index: str  # a retrieval index (GRIP's and RAG's passages)
    grip_model: str
    gag_questions: list[dict]  # {question, answer: [...]} of the first domain
    routing_questions: list[dict]  # {question, domain}
    grip_questions: list[dict]  # {question, answer: [...]}
    notes: list[str] = field(default_factory=list)


# Router-training and held-out questions for the random mode: different entity names, one set of
# wordings per domain (as the tiny world's offline and online sets).
WORDINGS = {
    "general": ["In what city was {} born?", "Which company does {} work at?", "In which year was {} founded?",
                "Name the country of the city {}."],
    "materials": ["What is the Faradaic efficiency of {}?", "What is the operating temperature of {}?",
                  "Through which method is the catalyst {} made?", "Which support material does {} sit on?"],
    "adjuvant": ["Through which receptor does the adjuvant {} signal?", "Which vaccine contains {}?",
                 "What dose of {} is given per shot?", "Which immune response does {} boost?"],
}
TRAIN_NAMES = ["Dorvin", "Kelbrue", "Masto Reil", "Quinsa", "Talmuk", "Vessra", "Brontal", "Ysmere"]
HELD_OUT_NAMES = ["Orrin Fel", "Zavrik", "Lumeth"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def random_inputs(work: Path) -> Inputs:
    """Tiny random base, expert and injector (`kinject.bench.setup.random_setup`), PPR banks built
    from the questions above, and a tantivy index of the setup's passages."""
    from kinject.bench.setup import random_setup

    setup = random_setup(work / "models")
    offline = {d: write_jsonl(work / "offline" / f"{d}.jsonl",
                              [{"question": w.format(n)} for w in wordings for n in TRAIN_NAMES])
               for d, wordings in WORDINGS.items()}
    kinject.build_banks(list(offline.items()), work / "banks", kinject.PPRConfig(k=4, n_init=2), progress=False)
    passages = write_jsonl(work / "passages.jsonl", [{"id": d.id, "text": d.text, "title": d.title}
                                                     for d in setup.grip_passages + setup.passages])
    kinject.build_index(passages, work / "index", progress=False)
    domains = [d for d in WORDINGS if d != "general"]
    return Inputs(
        source="random", base=setup.base,
        experts=dict.fromkeys(domains, setup.expert), injectors=dict.fromkeys(domains, setup.injector),
        instructions=dict.fromkeys(domains, setup.system), banks=str(work / "banks"), index=str(work / "index"),
        grip_model=setup.grip_model, gag_questions=setup.rows[:4],
        routing_questions=[{"question": w.format(n), "domain": d} for d, ws in WORDINGS.items()
                           for w in ws for n in HELD_OUT_NAMES[:1]] + [
            {"question": ws[0].format(HELD_OUT_NAMES[2]), "domain": d} for d, ws in WORDINGS.items()],
        grip_questions=setup.grip_rows[:3],
        notes=["tiny random models (one random expert and injector stand in for every domain): the answers "
               "are noise (often empty); routes and retrieved passages are real"])


def demo_inputs(root: Path, n: int) -> Inputs:
    """The outputs of `make demo` (the layout of configs/serve/tiny.yaml)."""
    from kinject.io import read_jsonl
    from kinject.resources import shipped

    world = root / "world" / "world"
    banks, index = root / "ppr" / "banks", root / "retrieval" / "wiki_index"
    need = [banks / "banks.json", index, root / "grip" / "model", world / "mixed_domain" / "online" / "mixed.jsonl",
            world / "wiki" / "qa_test.jsonl"]
    domains = [d for d in json.loads((banks / "banks.json").read_text())["domains"] if d != "general"] \
        if need[0].is_file() else []
    for d in domains:
        need += [root / "expert" / f"{d}_sft", root / "gag" / d / "injector", world / f"{d}_domain" / "qa_dev.jsonl"]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise kinject.UserError(f"--models {root}: missing {', '.join(missing[:3])}"
                                f"{' ...' if len(missing) > 3 else ''} (run `make demo` first)")
    base = root / "base" if (root / "base" / "config.json").is_file() else shipped("assets/foundation/tiny/base")
    dev = {d: read_jsonl(world / f"{d}_domain" / "qa_dev.jsonl") for d in domains}
    return Inputs(
        source=str(root), base=str(base),
        experts={d: str(root / "expert" / f"{d}_sft") for d in domains},
        injectors={d: str(root / "gag" / d / "injector") for d in domains},
        instructions={d: dev[d][0]["instruction"] for d in domains}, banks=str(banks), index=str(index),
        grip_model=str(root / "grip" / "model"),
        gag_questions=[{"question": r["input"], "answer": r["answer"]} for r in dev[domains[0]][:n]],
        routing_questions=read_jsonl(world / "mixed_domain" / "online" / "mixed.jsonl")[: 3 * n],
        grip_questions=read_jsonl(world / "wiki" / "qa_test.jsonl")[:n])


# ---------------------------------------------------------------- the five uses


def gag_answers(inp: Inputs, device: str) -> list[dict]:
    """GAG: the domain expert writes a background, 4 latent slots carry it into the frozen base."""
    domain = next(iter(inp.experts))
    # the background is written as the injector's training memories were (its recorded spec)
    pipe = kinject.GagPipeline.from_pretrained(expert=inp.experts[domain], base=inp.base, injector=inp.injectors[domain],
                               instruction=inp.instructions[domain], device=device)
    answers = pipe.answer([r["question"] for r in inp.gag_questions], max_new_tokens=16)
    return [{"domain": domain, "question": a.question, "answer": a.answer, "gold": r.get("answer"),
             "background": a.background, "background_tokens": a.background_tokens}
            for a, r in zip(answers, inp.gag_questions, strict=True)]


def routes(inp: Inputs, router) -> dict:
    """PPR: the nearest prototype of each domain's bank decides the route (`general`: the base)."""
    decisions = router.route_batch([r["question"] for r in inp.routing_questions])
    rows = [{"question": r["question"], "expected": r["domain"], "route": d.route, "score": round(d.score, 3)}
            for r, d in zip(inp.routing_questions, decisions, strict=True)]
    return {"domains": router.domains, "accuracy": sum(r["route"] == r["expected"] for r in rows) / len(rows),
            "decisions": rows}


def retrieval(inp: Inputs, index) -> list[dict]:
    """Retrieval (what RAG puts in the prompt and GRIP reads): the top passages per question."""
    return [{"question": r["question"], "hits": [{"id": h.id, "title": h.title, "text": h.text}
                                                  for h in index.search(r["question"], k=3)]}
            for r in inp.grip_questions]


def grip_answers(inp: Inputs, index, device: str) -> list[dict]:
    """GRIP: the model answers, or writes a partial answer and a query, retrieves, and goes on."""
    model, tok = kinject.load_causal_lm(inp.grip_model, device=device)
    agent = kinject.GripAgent.from_model(model, tok, index, kinject.AgentSettings(max_rounds=3, max_new_tokens=32))
    episodes = agent.run([r["question"] for r in inp.grip_questions])
    return [{"question": ep.question, "answer": ep.answer, "gold": r.get("answer"), "n_retrievals": ep.n_retrievals}
            for ep, r in zip(episodes, inp.grip_questions, strict=True)]


def mixed_answers(inp: Inputs, router, device: str) -> list[dict]:
    """Routing and answering in one call: `general` -> the base closed-book, a domain -> its GAG."""
    opts = kinject.MixedOptions(
        banks=inp.banks, base=inp.base, device=device, max_new_tokens=16,
        domains={d: {"expert": inp.experts[d], "injector": inp.injectors[d], "instruction": inp.instructions[d]}
                 for d in inp.experts})
    pipe = kinject.MixedPipeline.from_config(opts, encoder=router.encoder)  # the encoder loads once
    batch = [{"id": f"q{i}", "question": r["question"]} for i, r in enumerate(inp.routing_questions)]
    return [{"question": q["question"], "route": out["trace"]["route"], "method": out["trace"]["method"],
             "answer": out["prediction"]} for q, out in zip(batch, pipe.answer(batch), strict=True)]


# ---------------------------------------------------------------- main


def run(inp: Inputs, device: str) -> dict:
    out: dict = {"source": inp.source, "notes": inp.notes, "seconds": {}}

    def timed(name, fn, *args):
        t0 = time.perf_counter()
        out[name] = fn(*args)
        out["seconds"][name] = round(time.perf_counter() - t0, 2)

    timed("gag", gag_answers, inp, device)
    router = kinject.Router.from_pretrained(inp.banks)
    timed("routing", routes, inp, router)
    with kinject.open_index(inp.index) as index:
        timed("retrieval", retrieval, inp, index)
        timed("grip", grip_answers, inp, index, device)
    timed("mixed", mixed_answers, inp, router, device)
    return out


def show(out: dict) -> None:
    print(f"inputs: {out['source']}" + "".join(f"\n  note: {n}" for n in out["notes"]))
    print(f"\nGAG ({out['seconds']['gag']} s)")
    for r in out["gag"]:
        print(f"  {r['question']}\n    -> {r['answer']!r} (gold {r['gold']}, background {r['background_tokens']} tokens)")
    rt = out["routing"]
    print(f"\nPPR routing over {', '.join(rt['domains'])}: accuracy {rt['accuracy']:.2f} ({out['seconds']['routing']} s)")
    for r in rt["decisions"]:
        print(f"  {r['route']:>10} {r['score']:.3f}  {r['question']}" + ("" if r["route"] == r["expected"]
                                                                     else f"  (expected {r['expected']})"))
    print(f"\nRetrieval ({out['seconds']['retrieval']} s)")
    for r in out["retrieval"]:
        print(f"  {r['question']}\n    -> " + "; ".join(f"{h['id']} {h['title']}" for h in r["hits"]))
    print(f"\nGRIP agent ({out['seconds']['grip']} s)")
    for r in out["grip"]:
        print(f"  {r['question']}\n    -> {r['answer']!r} (gold {r['gold']}, {r['n_retrievals']} retrievals)")
    print(f"\nMixed pipeline ({out['seconds']['mixed']} s)")
    for r in out["mixed"]:
        print(f"  {r['route']:>10} {r['method']:>14}  {r['question']} -> {r['answer']!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, help="a `make demo` output dir (e.g. outputs/demo); default: tiny random models")
    ap.add_argument("--work", type=Path, help="where the random mode builds its models (default: a temporary dir)")
    ap.add_argument("--n", type=int, default=4, help="questions per part with --models")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny models run fastest on one)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="kinject-quickstart-") as tmp:
            inp = demo_inputs(args.models, args.n) if args.models else random_inputs(args.work or Path(tmp))
            out = run(inp, args.device)
    except kinject.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    show(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
