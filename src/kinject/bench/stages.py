"""`kinject bench stages`: training and build rates of every stage, each a short bounded run of
the real code on the tiny models:

- dapt, sft (expert Stage I/II, HF Trainer), grip_sft (TRL SFTTrainer): `warmup_steps + steps`
  optimizer steps; a callback reads the trainer's own token counter and the clock after the
  warm-up steps and at the end, so tokens/s covers the timed steps only.
- stage3 (GAG injector through the frozen base): the same per-step work as `Stage3Trainer`
  (its `stage3_losses`, backward, clip, AdamW step) on its domain phase; tokens = the base's
  non-padding prompt + answer tokens per batch (counted outside the timed region).
- memory (expert background + states + store), routing (PPR), retrieval (tantivy/bm25s/dense):
  the existing `kinject memory bench` / `kinject bench ppr` / `kinject bench retrieval` functions,
  their JSON embedded as is.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from kinject.bench.common import md_table, set_threads, write_outputs
from kinject.bench.config import StagesBenchConfig
from kinject.io import write_jsonl_atomic


class TokenRate:
    """TrainerCallback: tokens and seconds between the end of step `warmup` and the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.t0, self.tok0, self.t1, self.tok1, self.steps = warmup, None, 0, None, 0, 0
        self.c0 = self.c1 = 0.0

    def __getattr__(self, name):  # every other TrainerCallback hook: do nothing
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def _start(self, state) -> None:
        self.t0, self.tok0, self.step0 = time.perf_counter(), state.num_input_tokens_seen, state.global_step
        self.c0 = time.process_time()

    def on_train_begin(self, args, state, control, **kw):
        if self.warmup == 0:  # no warm-up: every step is timed (no step ends at global step 0)
            self._start(state)

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.warmup and self.warmup > 0:
            self._start(state)
        elif self.t0 is not None:
            self.t1, self.tok1, self.steps = time.perf_counter(), state.num_input_tokens_seen, state.global_step - self.step0
            self.c1 = time.process_time()

    def result(self, tokens_per_step: float | None = None) -> dict:
        if self.t0 is None or self.t1 is None:
            return {"error": "no timed steps"}
        secs = self.t1 - self.t0
        tokens = self.tok1 - self.tok0
        counted = "trainer counter"
        if not tokens and tokens_per_step:
            tokens, counted = tokens_per_step * self.steps, "estimated: steps x batch x mean example tokens"
        return {"timed_steps": self.steps, "seconds": round(secs, 3), "steps_per_s": round(self.steps / secs, 3),
                "tokens": int(tokens), "tokens_per_s": round(tokens / secs, 1), "tokens_counted_by": counted,
                **_cpu_rate(tokens, self.c1 - self.c0)}


def _cpu_rate(tokens: float, cpu_s: float) -> dict:
    """Tokens per CPU second of this process (all its threads): on a shared machine where this
    process gets a fraction of a core, the rate it would have with the core to itself."""
    return {"cpu_s": round(cpu_s, 3), "tokens_per_cpu_s": round(tokens / cpu_s, 1) if cpu_s > 0 else None}


@contextmanager
def default_callback(cb):
    """Add `cb` to every Trainer built inside (for trainers whose entry point takes no callbacks)."""
    import transformers.trainer as tt

    tt.DEFAULT_CALLBACKS.append(cb)
    try:
        yield
    finally:
        tt.DEFAULT_CALLBACKS.remove(cb)


def _train_section(cfg: StagesBenchConfig, batch: int):
    from kinject.expert.config import TrainSection

    return TrainSection(learning_rate=1e-3, max_steps=cfg.warmup_steps + cfg.steps, batch_size=batch,
                        eval_steps=10_000, logging_steps=10_000, threads=cfg.threads, warmup_ratio=0.0)


def bench_dapt(cfg, data: dict, work: Path) -> dict:
    from kinject.expert.config import DaptConfig
    from kinject.expert.dapt import run_dapt

    cb = TokenRate(cfg.warmup_steps)
    c = DaptConfig(model=data["expert_init"], corpus=data["corpus"], out=str(work / "dapt"), block_size=128,
                   separator="<|endoftext|>", train=_train_section(cfg, 32))
    run_dapt(c, force=True, callbacks=[cb])
    return {"batch": 32, "block_size": 128, **cb.result()}


def bench_sft(cfg, data: dict, work: Path) -> dict:
    from kinject.expert.config import SftConfig
    from kinject.expert.sft import run_sft

    cb = TokenRate(cfg.warmup_steps)
    c = SftConfig(model=data["expert_init"], data=data["qa"], out=str(work / "sft"), max_length=256,
                  train=_train_section(cfg, 32))
    run_sft(c, force=True, callbacks=[cb])
    return {"batch": 32, **cb.result()}


def bench_grip_sft(cfg, data: dict, work: Path) -> dict:
    from kinject.grip.config import GripSftConfig
    from kinject.grip.sft import read_sft_rows, sft_records, train_sft
    from kinject.models import load_tokenizer

    batch = 16
    c = GripSftConfig(model=data["base"], data=data["grip_sft"], out=str(work / "grip_sft"), learning_rate=1e-3,
                      max_steps=cfg.warmup_steps + cfg.steps, batch_size=batch, max_length=512,
                      threads=cfg.threads or 1, logging_steps=10_000, epochs=1)
    tok = load_tokenizer(data["base"])
    recs = sft_records(read_sft_rows(c.data), tok)
    lens = [len(x) for x in tok([r["prompt"] + r["completion"] for r in recs], add_special_tokens=False).input_ids]
    cb = TokenRate(cfg.warmup_steps)
    with default_callback(cb):
        train_sft(c)
    return {"batch": batch, **cb.result(tokens_per_step=batch * sum(lens) / len(lens))}


def bench_stage3(cfg, data: dict, work: Path) -> dict:
    """Stage III step rate for each `stage3_base_dtypes` entry; the first one's numbers at the top
    level, all of them (with the speedup over the first) under `by_base_dtype`."""
    runs = {dt: _stage3_rate(cfg, data, work, dt) for dt in cfg.stage3_base_dtypes}
    first = runs[cfg.stage3_base_dtypes[0]]
    if len(runs) > 1:
        for r in runs.values():
            r["speedup_vs_first"] = round(r["tokens_per_s"] / first["tokens_per_s"], 2)
    return {**first, "by_base_dtype": runs}


def _stage3_rate(cfg, data: dict, work: Path, base_dtype: str) -> dict:
    from kinject.bench.setup import shipped_gag_preset
    from kinject.gag.config import PhaseConfig, Stage3Config
    from kinject.gag.trainer import Stage3Trainer, batch_indices, stage3_losses

    batch = cfg.stage3_batch
    # the shipped preset's injector (attention pooling, heads, residual mix), not the config default
    c = Stage3Config(base=data["base"], out=str(work / "stage3"), threads=cfg.threads, base_dtype=base_dtype,
                     answer_format=cfg.stage3_answer_format, injector=shipped_gag_preset()[0],
                     domain=PhaseConfig(data=data["stage3_rows"], memory=data["stage3_memory"],
                                        max_steps=cfg.warmup_steps + cfg.steps, batch_size=batch, learning_rate=5e-4))
    tr = Stage3Trainer(c)
    phase = tr.phases[0]
    targets = tr._targets(phase)
    params = [p for p in tr.injector.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-4)
    tr.injector.train()
    tokens, secs, cpu = 0, 0.0, 0.0
    for step in range(cfg.warmup_steps + cfg.steps):
        idx = batch_indices(len(phase.rows), batch, step, c.seed)
        rows = [phase.rows[i] for i in idx]
        t, c0 = time.perf_counter(), time.process_time()
        losses = stage3_losses(tr.injector, tr.base, rows, phase.store, targets[idx] if targets is not None else None,
                               c.w_sem, c.w_div, c.max_length)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, c.clip)
        opt.step()
        dt, dc = time.perf_counter() - t, time.process_time() - c0
        if step >= cfg.warmup_steps:
            secs, cpu = secs + dt, cpu + dc
            tb = tr.base.encode_train([r["question"] for r in rows], [r["answer"] for r in rows], c.max_length,
                                      [r.get("instruction") for r in rows])
            tokens += int(tb.attention_mask.sum())
    return {"base_dtype": base_dtype, "batch": batch, "timed_steps": cfg.steps, "seconds": round(secs, 3),
            "steps_per_s": round(cfg.steps / secs, 3),
            "tokens": tokens, "tokens_per_s": round(tokens / secs, 1),
            "tokens_counted_by": "base prompt + answer tokens (non-padding) per batch", **_cpu_rate(tokens, cpu),
            "injector_parameters": tr.injector.trainable_parameters(), "base_frozen": True}


def bench_memory(cfg, data: dict, work: Path) -> dict:
    """`build_memory` (what `kinject memory build` runs) with the stage's expert and questions:
    the memory suite's function would impose its own layer keys on the demo's 3-layer expert."""
    import shutil

    from kinject.bench.setup import shipped_gag_preset
    from kinject.memory.build import build_memory
    from kinject.memory.config import MemoryBuildConfig

    out = work / "memory"
    shutil.rmtree(out, ignore_errors=True)
    c = MemoryBuildConfig(expert=data["expert"], questions=[data["memory_questions"]], out=str(out),
                          layers=data["memory_layers"], slots=4, max_new_tokens=48, batch_size=32, dtype="float16",
                          keep_trajectories=shipped_gag_preset()[1].keep_trajectories,
                          device="cpu", system=data.get("system", ""), threads=cfg.threads)
    c0 = time.process_time()
    r = build_memory(c, progress=False)
    return {**{k: r[k] for k in ("samples", "generated_tokens", "seconds", "samples_per_s", "tokens_per_s",
                                 "bytes_per_sample", "mean_tokens") if k in r},
            **_cpu_rate(r.get("generated_tokens", 0), time.process_time() - c0)}


def bench_routing(cfg, data: dict, work: Path) -> dict:
    if not data.get("ppr_banks"):
        return {"skipped": "needs PPR banks (demo artifacts); `kinject bench ppr` builds the tiny world itself"}
    from kinject.ppr.cli import bench_ppr

    out = work / "routing"
    bench_ppr(out=out, banks=Path(data["ppr_banks"]), data=Path(data["ppr_questions"]), world=None, n=1024,
              repeats=3, config=None, encoder=None, batch_size=None, device=None)
    return json.loads((out / "bench.json").read_text())


def bench_retrieval(cfg, data: dict, work: Path) -> dict:
    from kinject.retrieval.bench import run_bench

    return run_bench(work / "retrieval", [5000], ["tantivy", "bm25s"], dense_max=0, n_queries=500, words=100,
                     threads=1, seed=cfg.seed)


STAGES = {"dapt": bench_dapt, "sft": bench_sft, "stage3": bench_stage3, "memory": bench_memory,
          "grip_sft": bench_grip_sft, "routing": bench_routing, "retrieval": bench_retrieval}


def stage_data(cfg: StagesBenchConfig, work: Path) -> tuple[str, dict]:
    """Inputs of each stage: the demo's files, or synthetic ones with tiny random models."""
    from kinject.bench.setup import shipped_gag_preset

    art = cfg.artifacts
    root = Path(art.root)
    world = root / "world" / "world"
    demo = {"expert_init": "assets/foundation/tiny/expert_init", "base": art.base,
            "corpus": str(world / "materials_domain" / "knowledge_base.jsonl"),
            "qa": str(world / "materials_domain" / "qa_train.jsonl"),
            "grip_sft": str(root / "grip" / "synth" / "sft.jsonl"),
            "stage3_rows": str(world / "materials_domain" / "qa_train.jsonl"),
            "stage3_memory": str(root / "memory" / "materials"), "expert": str(root / "expert" / "materials_sft"),
            "memory_questions": str(world / "materials_domain" / "qa_dev.jsonl"), "system": art.system,
            "ppr_banks": str(root / "ppr" / "banks"), "ppr_questions": str(world / "mixed_domain" / "online" / "mixed.jsonl")}
    present = all(Path(v).exists() for k, v in demo.items() if k != "system")
    demo["memory_layers"] = list(shipped_gag_preset()[1].layers)  # the demo expert's memory layers
    if cfg.source == "demo" or (cfg.source == "auto" and present):
        return "demo", demo
    return "random", random_data(work / "random")


def random_data(work: Path) -> dict:
    from kinject.bench.setup import random_setup, shipped_gag_preset
    from kinject.memory.build import build_memory
    from kinject.memory.config import MemoryBuildConfig

    s = random_setup(work / "models")
    mem = shipped_gag_preset()[1]
    rows = [{"id": f"r{i}", "question": r["question"], "answer": r["answer"][0], "instruction": r["instruction"],
             "input": r["question"], "output": r["answer"][0]} for i, r in enumerate(s.rows)]
    write_jsonl_atomic(work / "qa.jsonl", rows)
    # enough packed 128-token blocks for full batches of 32
    write_jsonl_atomic(work / "corpus.jsonl", [{"text": d.text} for d in s.passages] * 20)
    store = work / "store"
    import shutil

    shutil.rmtree(store, ignore_errors=True)
    # the shipped memory preset's layers, slots and trajectories (what stage3's attention pooling reads)
    build_memory(MemoryBuildConfig(expert=s.expert, questions=[str(work / "qa.jsonl")], out=str(store),
                                   layers=mem.layers, slots=mem.slots, keep_trajectories=mem.keep_trajectories,
                                   max_new_tokens=16, device="cpu", system=s.system), progress=False)
    return {"expert_init": s.expert, "base": s.base, "corpus": str(work / "corpus.jsonl"), "qa": str(work / "qa.jsonl"),
            "stage3_rows": str(work / "qa.jsonl"), "stage3_memory": str(store), "expert": s.expert,
            "memory_questions": str(work / "qa.jsonl"), "memory_layers": list(mem.layers), "system": s.system}


def run_stages(cfg: StagesBenchConfig, out: Path) -> dict:
    set_threads(cfg.threads)
    work = out / "_work"
    source, data = stage_data(cfg, work)
    results = {}
    for name in cfg.only:
        if name == "grip_sft" and "grip_sft" not in data:
            results[name] = {"skipped": "needs GRIP synthesized SFT data (demo artifacts)"}
            continue
        results[name] = STAGES[name](cfg, data, work)
        set_threads(cfg.threads)  # a stage may have changed the thread count
    rows = []
    for name, r in results.items():
        rate = r.get("tokens_per_s") or r.get("generated_tokens_per_s")
        rows.append({"stage": name, "tokens_per_s": rate, "tokens_per_cpu_s": r.get("tokens_per_cpu_s"),
                     "steps_per_s": r.get("steps_per_s"),
                     "samples_or_queries_per_s": r.get("samples_per_s") or r.get("queries_per_s"),
                     "note": r.get("skipped") or r.get("tokens_counted_by") or ""})
    for name, r in results.items():
        for v in r.get("results", []) if name == "retrieval" else []:
            rows.append({"stage": f"retrieval {v['backend']} ({v['corpus_size']} docs)",
                         "samples_or_queries_per_s": v.get("single_qps"),
                         "note": f"single-thread queries/s; build {v.get('build_docs_per_s')} docs/s"})
    result = {"config": cfg.model_dump(), "source": source, "inputs": data, "stages": results}
    lines = [f"Inputs: {source}; {cfg.steps} timed steps after {cfg.warmup_steps} warm-up steps.", ""]
    lines += md_table(rows, ["stage", "tokens_per_s", "tokens_per_cpu_s", "steps_per_s", "samples_or_queries_per_s",
                             "note"])
    write_outputs(out, "stages", result, lines)
    return result
