"""The real-model recipe, `kinject demo --preset smollm2`: the whole pipeline with a REAL frozen
base, SmolLM2-135M-Instruct.

The private side is the tiny world's (its experts know the private facts; their memories are the
ones `make demo` builds): the preset first runs the tiny recipe's `foundation, world, retrieval,
ppr, expert, memory` stages (a skip when `make demo` already made them), then its own stages, each
skipped when its inputs are unchanged and resumable where it trains:

- `import`  the packaged GGUF model -> a dense local checkpoint (`kinject model import`)
- `corpus`  one knowledge index (tantivy): the private domains' knowledge bases, cut into
            32-word windows, plus the NQ dev passages (real questions, real Wikipedia text)
- `gag`     Stage III per private domain into the frozen real base (configs/real/), then GAG on
            the stored dev memories with the zeroed / foreign-memory controls
- `lora`    the LoRA baseline per private domain: adapters on the frozen real base, trained on
            the domain's QA train split with the harness's prompt (configs/real/*_lora_smollm2.yaml)
- `eval`    every method from one harness run (configs/real/eval_smollm2.yaml): report.md; with
            `mixed` (PPR routing -> the untouched real base for general questions / GAG) on a
            mixed set: private dev questions beside real NQ questions (`domain: general`)

Every stage's wall and CPU seconds go to `<out>/timings.json` (as in the tiny demo).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from kinject.recipes.engine import (
    DemoContext,
    Stage,
    StageTimings,
    _run_stage,
    run_demo,
    run_parallel,
)
from kinject.resources import shipped

MODEL = "smollm2-135m-instruct"
DOMAINS = ("materials", "adjuvant")
TINY_PREREQUISITES = ["foundation", "world", "retrieval", "ppr", "expert", "memory"]
NQ = shipped("data/realqa/nq_oracle")
CHUNK_WORDS, CHUNK_OVERLAP = 32, 8
DEV_LIMIT = 120  # questions per private dev set (the harness's and the controls')
MIXED_PER_SOURCE = 40  # the mixed set: this many materials, adjuvant and NQ questions
# QUICK: the tiny memory stage then stores 4,000 alignment items (kinject.recipes.tiny.memory.QUICK)
QUICK = {"gag": ["alignment.max_steps=30", "alignment.limit=4000", "domain.max_steps=10"],
         "lora": ["train.max_steps=4", "train.eval_steps=2"], "limit": 16}

STAGES: list[Stage] = []


def real_stage(name: str, order: int, help: str):
    def deco(fn: Callable[[DemoContext, Path], None]):
        STAGES.append(Stage(name, fn, help, order))
        STAGES.sort(key=lambda s: s.order)
        return fn

    return deco


@real_stage("import", 0, "SmolLM2-135M-Instruct (packaged GGUF, Q4_1) -> a dense local checkpoint")
def import_stage(ctx: DemoContext, out: Path) -> None:
    from kinject.model_import import import_gguf

    model_dir = Path(ctx.out).parent / "models" / MODEL  # outputs/real -> outputs/models/<model>
    man = import_gguf(MODEL, model_dir)
    ctx.artifacts["real_base"] = model_dir
    ctx.summary["import: base"] = f"{MODEL} ({man['quantization']} dequantized, {man['parameters']:,} parameters)"


def write_knowledge_corpus(world: Path, nq_passages: Path | None, out: Path) -> int:
    """The private domains' knowledge bases (32-word windows, `world.private.knowledge_passages`)
    and the NQ passages as one `{id, title, text}` JSONL; returns the number of passages."""
    from kinject.io import write_jsonl_atomic
    from kinject.retrieval.ingest import read_passages
    from kinject.world.private import knowledge_passages

    rows = knowledge_passages(world, DOMAINS, CHUNK_WORDS, CHUNK_OVERLAP)
    if nq_passages is not None:
        rows += [{"id": f"nq:{p.id}", "title": p.title, "text": p.text} for p in read_passages(nq_passages)]
    write_jsonl_atomic(out, rows)
    return len(rows)


@real_stage("corpus", 10, "one tantivy index: the private knowledge bases (chunked) + the NQ passages")
def corpus_stage(ctx: DemoContext, out: Path) -> None:
    from kinject.io import write_json_atomic
    from kinject.retrieval.base import META_FILE, read_meta
    from kinject.retrieval.index import build_index
    from kinject.runs import inputs_hash

    world = Path(ctx.artifacts["world"])
    nq = NQ / "passages.tsv" if (NQ / "passages.tsv").is_file() else None
    sources = [world / f"{d}_domain" / "knowledge_base.jsonl" for d in DOMAINS] + ([nq] if nq else [])
    index = out / "index"
    h = inputs_hash({"backend": "tantivy", "chunk": [CHUNK_WORDS, CHUNK_OVERLAP]}, *sources)
    if not ((index / META_FILE).is_file() and read_meta(index).get("inputs_hash") == h):
        n = write_knowledge_corpus(world, nq, out / "passages.jsonl")
        build_index(out / "passages.jsonl", index, "tantivy", progress=False)
        meta = read_meta(index)
        meta["inputs_hash"] = h
        write_json_atomic(index / META_FILE, meta)
        ctx.summary["corpus: passages indexed"] = n
    ctx.artifacts["knowledge_index"] = index


def stage3_config(domain: str, world: Path, base: Path, mem: Path, amem: Path, out: Path,
                  overrides: list[str]) -> tuple:
    """(the domain's Stage III config with this run's paths, the hash of its inputs)."""
    from kinject.config import load_config
    from kinject.gag.config import Stage3Config
    from kinject.gag.stage3 import domain_paths
    from kinject.runs import inputs_hash

    cfg = load_config(shipped(f"configs/real/{domain}_stage3_smollm2.yaml"),
                      [*domain_paths(world, domain, base, mem, amem, out), *overrides], expect=Stage3Config)
    return cfg, inputs_hash(cfg, mem / "manifest.json", amem / "manifest.json", base / "kinject_import.json")


def train_real_injector(domain: str, world: Path, base: Path, mem: Path, amem: Path, out: Path,
                        overrides: list[str], limit: int) -> Path:
    """Stage III into the real base + GAG on stored dev memories with controls, and on fresh
    general facts only the expert read (the channel alone); a worker of `run_parallel`, resumed
    from its checkpoints; returns the run dir."""
    from kinject.gag.stage3 import EvalSet, train_and_score
    from kinject.io import read_jsonl

    cfg, h = stage3_config(domain, world, base, mem, amem, out, overrides)

    def eval_sets() -> list[EvalSet]:
        sets = [EvalSet(mem, read_jsonl(world / f"{domain}_domain" / "qa_dev.jsonl")[:limit], domain, "dev", "dev")]
        align_dev = world / "general" / "align_dev.jsonl"
        if align_dev.is_file():
            sets.append(EvalSet(amem, read_jsonl(align_dev)[:limit], "align_fresh", "dev", "align_dev",
                                controls=False))
        return sets

    return train_and_score(cfg, h, "real gag", eval_sets, batch_size=16)


@real_stage("gag", 20, "GAG Stage III into the frozen real base per private domain; controls on dev")
def gag_stage(ctx: DemoContext, out: Path) -> None:
    from kinject.eval.results import read_results, write_results

    world, base = Path(ctx.artifacts["world"]), Path(ctx.artifacts["real_base"])
    limit = QUICK["limit"] if ctx.quick else DEV_LIMIT
    jobs = [(d, world, base, Path(ctx.artifacts[f"memory_{d}"]), Path(ctx.artifacts[f"align_memory_{d}"]), out,
             QUICK["gag"] if ctx.quick else [], limit) for d in DOMAINS]
    rows = []
    for domain, run_dir in zip(DOMAINS, run_parallel(train_real_injector, jobs)):
        got = read_results(run_dir / "eval" / "results.jsonl")
        rows += got
        ctx.artifacts[f"real_injector_{domain}"] = run_dir / "injector"
        ha = {(r.dataset, r.method): r.value for r in got if r.metric == "has_answer"}
        ctx.summary[f"gag {domain}: dev has_answer (zeroed / foreign memories)"] = (
            f"{ha[(domain, 'gag')]:.2f} ({ha[(domain, 'gag_zero_memory')]:.2f} / "
            f"{ha[(domain, 'gag_foreign_memory')]:.2f})")
    write_results(out / "results.jsonl", rows, append=False)


@real_stage("lora", 25, "LoRA baseline: adapters on the frozen real base per private domain (QA train split)")
def lora_stage(ctx: DemoContext, out: Path) -> None:
    from kinject.baselines.config import LoraBaselineConfig
    from kinject.baselines.lora import run_lora
    from kinject.config import load_config

    world, base = Path(ctx.artifacts["world"]), Path(ctx.artifacts["real_base"])
    for domain in DOMAINS:
        cfg = load_config(shipped(f"configs/real/{domain}_lora_smollm2.yaml"), [
            f"base={base}", f"data={world / f'{domain}_domain' / 'qa_train.jsonl'}", f"out={out / domain}",
            *(QUICK["lora"] if ctx.quick else [])], expect=LoraBaselineConfig)
        ctx.artifacts[f"real_lora_{domain}"] = run_lora(cfg)


def write_mixed_set(world: Path, nq_questions: Path, out: Path, per_source: int) -> Path:
    """Private dev questions (their own `domain`) beside real NQ questions (`domain: general`):
    the first `per_source` of each, with their answers, for routing + answering in one pass."""
    from kinject.io import read_jsonl, write_jsonl_atomic

    rows = []
    for d in DOMAINS:
        rows += [{"id": r["id"], "question": r["input"], "answer": r["answer"], "domain": d}
                 for r in read_jsonl(world / f"{d}_domain" / "qa_dev.jsonl")[:per_source]]
    rows += [{"id": f"nq-{r['id']}", "question": r["question"], "answer": r["answer"], "domain": "general"}
             for r in read_jsonl(nq_questions)[:per_source]]
    write_jsonl_atomic(out, rows)
    return out


def real_methods(artifacts: dict) -> list[dict]:
    """Method entries for the harness: every method on the real base, from the stages' outputs."""
    from kinject.recipes.tiny.eval import memory_of

    base, index = str(artifacts["real_base"]), str(artifacts["knowledge_index"])
    private = list(DOMAINS)
    experts = {d: str(artifacts[f"expert_{d}"]) for d in DOMAINS}
    bg = {d: {"expert": e, **memory_of(artifacts, d)} for d, e in experts.items()}
    entries = [{"name": "base", "options": {"model": base}}]
    entries += [{"name": f"rag_k{k}", "options": {"model": base, "index": index, "passage_format": "numbered"}}
                for k in (1, 3)]
    entries += [
        {"name": "expert", "options": {"domains": experts}, "datasets": private},
        {"name": "text_injection", "options": {"base": base, "domains": bg}, "datasets": private},
        {"name": "gag", "datasets": private, "options": {"base": base, "domains": {
            d: {**bg[d], "injector": str(artifacts[f"real_injector_{d}"])} for d in DOMAINS}}},
    ]
    if all(f"real_lora_{d}" in artifacts for d in DOMAINS):
        entries.append({"name": "lora", "datasets": private, "options": {
            "base": base, "domains": {d: str(artifacts[f"real_lora_{d}"]) for d in DOMAINS}}})
    if artifacts.get("ppr_banks"):
        from kinject.expert.evaluate import default_instruction

        entries.append({"name": "mixed", "datasets": ["mixed"], "options": {
            "banks": str(artifacts["ppr_banks"]), "base": base, "domains": {
                d: {**bg[d], "injector": str(artifacts[f"real_injector_{d}"]),
                    "instruction": default_instruction(experts[d])} for d in DOMAINS}}})
    return entries


@real_stage("eval", 30, "every method on the real base (harness): has_answer / F1 / EM, report.md")
def eval_stage(ctx: DemoContext, out: Path) -> None:
    from kinject.config import load_config
    from kinject.eval.config import DatasetEntry, EvalConfig, MethodEntry
    from kinject.eval.harness import run_eval

    config = shipped("configs/real/eval_smollm2.yaml")
    world = Path(ctx.artifacts["world"])
    cfg = load_config(config, [f"limit={QUICK['limit'] if ctx.quick else DEV_LIMIT}"], expect=EvalConfig)
    for d in cfg.datasets:  # the private sets come from this run's tiny world
        if d.name in DOMAINS:
            d.path = world / f"{d.name}_domain" / "qa_dev.jsonl"
    cfg.datasets = [d for d in cfg.datasets if d.name in DOMAINS or cfg.dataset_path(d).is_file()]
    methods = real_methods(dict(ctx.artifacts))
    nq = NQ / "dev.jsonl"
    if any(m["name"] == "mixed" for m in methods) and nq.is_file():
        per = QUICK["limit"] if ctx.quick else MIXED_PER_SOURCE
        path = write_mixed_set(world, nq, out.parent / "mixed.jsonl", per)
        cfg.datasets.append(DatasetEntry(name="mixed", path=path.resolve(), split="dev",
                                         metrics=["has_answer", "f1", "em"]))
    else:
        methods = [m for m in methods if m["name"] != "mixed"]
    cfg.methods = [MethodEntry(**m) for m in methods]
    run_eval(cfg, out, source=str(config))
    ctx.summary["eval: report"] = out / "report.md"


def run_real_preset(out: Path, tiny_out: Path, quick: bool = False) -> DemoContext:
    """The tiny prerequisites (skipped when done), then the real-model stages (see the module doc)."""
    tiny = run_demo(tiny_out, quick=quick, only=TINY_PREREQUISITES)
    ctx = DemoContext(out=out, quick=quick, artifacts=dict(tiny.artifacts))
    out.mkdir(parents=True, exist_ok=True)
    timings = StageTimings(out, uuid.uuid4().hex[:12], "main")
    timings.run(started=time.strftime("%Y-%m-%dT%H:%M:%S"), cores=os.cpu_count(), quick=quick, preset=MODEL)
    t0 = time.perf_counter()
    try:
        for st in STAGES:  # later stages need the artifacts of earlier ones: each runs or skips itself
            _run_stage(ctx, st, out, timings)
    finally:
        timings.run(wall_s=round(time.perf_counter() - t0, 2))
    ctx.summary["wall_time_s"] = round(time.perf_counter() - t0, 1)
    return ctx
