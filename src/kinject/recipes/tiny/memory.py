"""Demo stage `memory` (order 60): GAG memories for both private domains on the tiny world.

Per domain, with that domain's SFT expert (`ctx.artifacts["expert_<domain>"]`): generated
backgrounds for the domain's train/dev/dev_para questions (`configs/gag/<domain>_memory_tiny.yaml`)
and the expert's reading of the world's alignment items (`<domain>_align_memory_tiny.yaml`).
Sets `ctx.artifacts["memory_<domain>"]` and `["align_memory_<domain>"]`. Each store skips
itself when its inputs are unchanged; a store built from other inputs is rebuilt, never mixed
(`kinject.memory.domains`).
"""

from __future__ import annotations

from pathlib import Path

from kinject.recipes.engine import DemoContext, stage

DOMAINS = ("materials", "adjuvant")
# align_dev comes first so the QUICK limit keeps all of it (the gag stage scores fresh-fact transfer on it)
QUICK = {"domain": ["max_new_tokens=48"], "align": ["limit=4500"]}


@stage("memory", order=60, help="GAG memories: expert backgrounds -> 4-layer slots, per private domain")
def memory_stage(ctx: DemoContext, out: Path) -> None:
    from kinject.memory.domains import build_domain_stores
    from kinject.recipes.engine import run_parallel

    world = Path(ctx.artifacts["world"])
    preset = (QUICK["domain"], QUICK["align"]) if ctx.quick else ([], [])
    jobs = [(d, world, Path(ctx.artifacts[f"expert_{d}"]), out, *preset) for d in DOMAINS]
    for domain, (store, stats, align_store) in zip(DOMAINS, run_parallel(build_domain_stores, jobs)):
        ctx.artifacts[f"memory_{domain}"] = store
        ctx.artifacts[f"align_memory_{domain}"] = align_store
        if stats:
            ctx.summary[f"memory {domain}: samples/s, generated tokens/s"] = (
                f"{stats['samples_per_s']}, {stats['tokens_per_s']}")
        if (world / f"{domain}_domain" / "qa_dev.jsonl").is_file():
            ctx.summary[f"memory {domain}: dev backgrounds stating the gold value"] = round(
                background_hit_rate(store, world / f"{domain}_domain" / "qa_dev.jsonl"), 3)


def background_hit_rate(store: Path, questions: Path) -> float:
    """Share of questions whose stored background contains a gold answer (DPR has_answer): the
    ceiling of what GAG and text injection can pass on from this expert."""
    from kinject.eval.metrics import has_answer
    from kinject.io import iter_jsonl
    from kinject.memory.store import item_id

    backgrounds = {r["id"]: r.get("background", "") for r in iter_jsonl(store / "index.jsonl")}
    hits = [has_answer(backgrounds[item_id(r)], r["answer"]) for r in iter_jsonl(questions) if item_id(r) in backgrounds]
    return sum(hits) / len(hits) if hits else 0.0
