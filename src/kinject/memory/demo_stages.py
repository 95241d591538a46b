"""Demo stage `memory` (order 60): GAG memories for both private domains on the tiny world.

Per domain, with that domain's SFT expert (`ctx.artifacts["expert_<domain>"]`): generated
backgrounds for the domain's train/dev/dev_para questions (`configs/gag/<domain>_memory_tiny.yaml`)
and the expert's reading of the world's alignment items (`<domain>_align_memory_tiny.yaml`).
Sets `ctx.artifacts["memory_<domain>"]` and `["align_memory_<domain>"]`. Each store skips
itself when its inputs are unchanged; a store built from other inputs is rebuilt, never mixed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kinject.demo import DemoContext, stage
from kinject.resources import shipped

DOMAINS = ("materials", "adjuvant")
# align_dev comes first so the QUICK limit keeps all of it (the gag stage scores fresh-fact transfer on it)
QUICK = {"domain": ["max_new_tokens=48"], "align": ["limit=4500"]}


def fresh_or_resume(out: Path, expected_hash: str) -> None:
    """Keep `out` for resuming only if it was started from the same inputs; else remove it."""
    marker = out.parent / f".{out.name}.inputs"
    if out.exists() and (not marker.is_file() or marker.read_text() != expected_hash):
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(expected_hash)


def build_store(config_file: Path, overrides: list[str], files: list[Path]) -> tuple[Path, dict | None]:
    """Build one store unless complete with the same inputs; returns (dir, stats or None if skipped)."""
    from kinject.config import load_config
    from kinject.memory.build import build_memory
    from kinject.memory.config import MemoryBuildConfig
    from kinject.memory.store import MemoryStore
    from kinject.runs import RunRecorder, inputs_hash, is_complete

    cfg = load_config(config_file, overrides, expect=MemoryBuildConfig)
    out = Path(cfg.out)
    h = inputs_hash(cfg, *files)
    if is_complete(out, h):
        return out, None
    fresh_or_resume(out, h)
    rec = RunRecorder(out, "demo memory", cfg, cfg.seed)
    with rec.timer("build"):
        stats = build_memory(cfg)
    rec.metrics.update(stats)
    rec.metrics.update(MemoryStore(out).stats())
    rec.write(inputs_hash=h)
    return out, stats


def build_domain_stores(domain: str, world: Path, expert: Path, out: Path, domain_overrides: list[str],
                        align_overrides: list[str]) -> tuple:
    """One domain's two stores (a worker of `run_parallel`; the preset's overrides are passed in,
    resolved by the caller): (domain store, stats, align store)."""
    ddir = world / f"{domain}_domain"
    qfiles = [ddir / f"qa_{s}.jsonl" for s in ("train", "dev", "dev_para")]
    store, stats = build_store(
        shipped(f"configs/gag/{domain}_memory_tiny.yaml"),
        [f"expert={expert}", f"out={out / domain}", f"questions=[{', '.join(map(str, qfiles))}]",
         *domain_overrides],
        [expert, *qfiles])
    align = [f for f in (world / "general" / "align_dev.jsonl", world / "general" / "align.jsonl") if f.is_file()]
    align_store, _ = build_store(
        shipped(f"configs/gag/{domain}_align_memory_tiny.yaml"),
        [f"expert={expert}", f"out={out / f'{domain}_align'}", f"questions=[{', '.join(map(str, align))}]",
         *align_overrides],
        [expert, *align])
    return store, stats, align_store


@stage("memory", order=60, help="GAG memories: expert backgrounds -> 4-layer slots, per private domain")
def memory_stage(ctx: DemoContext, out: Path) -> None:
    from kinject.demo import run_parallel

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
