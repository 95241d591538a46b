"""`kinject bench levers`: each speed lever measured before/after in one run, with the
prediction made from a first measurement written next to the result.

- cache: `GagPipeline`'s per-question memory cache (LRU keyed by question + expert fingerprint).
  Predicted warm time = the base side alone (injector + base generation, timed on its own).
- cap: the background-length cap, `max_background_tokens`; GAG EM on the dev questions and the
  time per question at each cap (the accuracy cost of a shorter background).
- batching: the expert's background generation (and the whole pipeline) at batch 1 vs 16.
  Predicted speedup = B x (ms per decode step at batch 1) / (ms per decode step at batch B).
- static cache + torch.compile for decoding: ms per decoded token, dynamic cache vs static vs
  static + compile (inductor, compiled on CPU via CompileConfig._compile_all_devices).
- prefill memories (memory build `source: prefill`): GAG at batch 1 with the expert's states over
  the question and a fixed answer prefix read in one forward pass, against generated backgrounds.
  Predicted time = the generated run minus the expert's background decoding. The injector is the
  one given (trained on generated memories unless built on prefill stores), so the EM here says
  nothing of the lever's accuracy: that needs Stage III on prefill stores (docs/performance.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from kinject.bench.common import md_table, ratio, set_threads, write_outputs
from kinject.bench.config import LeversBenchConfig
from kinject.bench.setup import resolve_setup
from kinject.bench.timing import timed_texts
from kinject.eval.metrics import exact_match


def _pipe(setup, cfg, cache_size: int, batch_size: int = 16):
    from kinject.gag.pipeline import GagPipeline

    return GagPipeline.from_pretrained(setup.expert, setup.base, setup.injector, setup.system, "", cfg.max_background_tokens,
                       "cpu", "float32", batch_size, cache_size=cache_size)


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


@torch.no_grad()
def lever_cache(pipe, rows: list[dict], max_new: int) -> dict:
    qs, instr = [r["question"] for r in rows], [r.get("instruction") for r in rows]
    pipe.cache.clear()
    cold, t_cold = _timed(lambda: pipe.answer(qs, instr, max_new))
    # prediction: a hit skips the expert entirely, so warm ~ the base side alone
    _, inputs = pipe.memories(qs)  # all hits now
    z = pipe.injector(**inputs)
    _, t_base = _timed(lambda: pipe.base.generate(qs, z, max_new, pipe.batch_size, instr))
    hits0 = pipe.cache.hits
    warm, t_warm = _timed(lambda: pipe.answer(qs, instr, max_new))
    return {"questions": len(qs), "cold_s": round(t_cold, 3), "warm_s": round(t_warm, 3),
            "predicted_warm_s": round(t_base, 3), "speedup": ratio(t_cold, t_warm, 2),
            "predicted_speedup": ratio(t_cold, t_base, 2), "warm_hits": pipe.cache.hits - hits0,
            "identical_answers": [a.answer for a in cold] == [a.answer for a in warm],
            "cache": pipe.cache.stats()}


@torch.no_grad()
def lever_cap(pipe, rows: list[dict], caps: list[int], max_new: int, scored: bool) -> list[dict]:
    qs, instr = [r["question"] for r in rows], [r.get("instruction") for r in rows]
    out, old = [], pipe.background
    try:
        for cap in caps:  # deliberately off the recorded cap: the lever measures what the cap costs
            pipe.background = old.model_copy(update={"max_new_tokens": cap})
            pipe.cache.clear()
            ans, secs = _timed(lambda: pipe.answer(qs, instr, max_new))
            toks = [a.background_tokens for a in ans]
            out.append({"cap": cap, "em": round(sum(exact_match(a.answer, r["answer"]) for a, r in zip(ans, rows))
                                                / len(rows), 4) if scored else None,
                        "mean_background_tokens": round(sum(toks) / len(toks), 2),
                        "share_at_cap": round(sum(t >= cap for t in toks) / len(toks), 3),
                        "ms_per_question": round(secs * 1000 / len(rows), 2), "n": len(rows)})
    finally:
        pipe.background = old
    return out


@torch.no_grad()
def lever_batching(pipe, rows: list[dict], sizes: list[int], max_new: int) -> dict:
    from kinject.memory.background import background_prompts

    qs, instr = [r["question"] for r in rows], [r.get("instruction") for r in rows]
    spec = pipe.background
    prompts = background_prompts(pipe.expert_tok, qs, spec.system, spec.request)
    runs, answers, step_ms = [], {}, {}
    old = pipe.batch_size
    try:
        for bs in sizes:
            # one batch of the expert's generation: ms per decode step at this batch size
            _, tm = timed_texts(pipe.expert, pipe.expert_tok, prompts[:bs], spec.max_new_tokens, bs)
            step_ms[bs] = tm["decode_ms"] / max(tm["decode_steps"], 1)
            pipe.batch_size = bs
            pipe.cache.clear()
            ans, secs = _timed(lambda: pipe.answer(qs, instr, max_new))
            answers[bs] = [a.answer for a in ans]
            runs.append({"batch_size": bs, "seconds": round(secs, 3), "questions_per_s": round(len(qs) / secs, 2),
                         "expert_ms_per_decode_step": round(step_ms[bs], 3)})
    finally:
        pipe.batch_size = old
    b1, bmax = sizes[0], sizes[-1]
    return {"runs": runs, "already_batched": "generate_backgrounds -> generate_texts(batch_size) + one "
                                            "teacher-forced states forward per batch",
            "predicted_speedup": ratio(bmax / b1 * step_ms[b1], step_ms[bmax], 2),
            "measured_speedup": ratio(runs[-1]["questions_per_s"], runs[0]["questions_per_s"], 2),
            "identical_answers": all(answers[b] == answers[b1] for b in sizes)}


@torch.no_grad()
def lever_static_compile(model, tok, prompt: str, n_tokens: int, compile_too: bool) -> list[dict]:
    """Decode `n_tokens` (forced: min_new_tokens) at batch 1: dynamic cache, static cache, static + compile."""
    from transformers import CompileConfig

    variants = [("dynamic_cache", {}), ("static_cache", {"cache_implementation": "static", "disable_compile": True})]
    if compile_too:
        cc = CompileConfig(mode="default", dynamic=False)
        cc._compile_all_devices = True  # transformers compiles only on GPUs unless told
        variants.append(("static_cache_compiled", {"cache_implementation": "static", "compile_config": cc}))
    out = []
    for name, kw in variants:
        first, t_first = _timed(lambda kw=kw: timed_texts(model, tok, [prompt], n_tokens, 1, min_new_tokens=n_tokens,
                                                          **kw))
        per = []
        for _ in range(3):
            gens, tm = timed_texts(model, tok, [prompt], n_tokens, 1, min_new_tokens=n_tokens, **kw)
            per.append(tm)
        best = min(per, key=lambda t: t["decode_ms"])
        out.append({"variant": name, "first_call_s": round(t_first, 2), "prefill_ms": round(best["prefill_ms"], 3),
                    "decode_ms_per_token": round(best["decode_ms"] / max(best["decode_steps"], 1), 3),
                    "text": gens[0].text[:40]})
    base = out[0]["decode_ms_per_token"]
    for r in out:
        r["decode_speedup_vs_dynamic"] = ratio(base, r["decode_ms_per_token"], 2)
    return out


@torch.no_grad()
def lever_prefill(pipe, rows: list[dict], max_new: int, answer_prefix: str, scored: bool) -> dict:
    """Per question at batch 1: GAG with generated memories (`GagPipeline.answer`, cache off) vs
    the same injector and base fed memories without decoding (`prefill_traces`)."""
    from kinject.bench.methods import injector_inputs
    from kinject.memory.background import background_prompts, prefill_traces

    cfg, spec = pipe.injector.config, pipe.background
    gen_s, pre_s, expert_s, decode_s, gen_em, pre_em, read = [], [], [], [], [], [], []
    for r in rows:
        q, instr = r["question"], r.get("instruction")
        pipe.cache.clear()
        ans, secs = _timed(lambda q=q, instr=instr: pipe.answer([q], [instr], max_new)[0])
        gen_s.append(secs)
        _, tm = timed_texts(pipe.expert, pipe.expert_tok,
                            background_prompts(pipe.expert_tok, [q], spec.system, spec.request), spec.max_new_tokens)
        decode_s.append(tm["decode_ms"] / 1000)
        t = time.perf_counter()
        (tr,) = prefill_traces(pipe.expert, pipe.expert_tok, [q], cfg.layers, spec.system, answer_prefix,
                               request=spec.request)
        expert_s.append(time.perf_counter() - t)
        z = pipe.injector(**injector_inputs(pipe.injector, [tr.states]))
        g = pipe.base.generate([q], z, max_new, 1, [instr])[0]
        pre_s.append(time.perf_counter() - t)
        read.append(tr.n_tokens)
        gen_em.append(exact_match(ans.answer, r["answer"]))
        pre_em.append(exact_match(g.text, r["answer"]))
    ms = lambda xs: round(1000 * sorted(xs)[len(xs) // 2], 2)  # noqa: E731 (p50)
    predicted = [a - d for a, d in zip(gen_s, decode_s)]
    return {"questions": len(rows), "answer_prefix": answer_prefix, "generated_e2e_ms_p50": ms(gen_s),
            "prefill_e2e_ms_p50": ms(pre_s), "predicted_prefill_e2e_ms_p50": ms(predicted),
            "prefill_expert_ms_p50": ms(expert_s), "expert_decode_ms_p50": ms(decode_s),
            "speedup": ratio(sum(gen_s), sum(pre_s), 2), "predicted_speedup": ratio(sum(gen_s), sum(predicted), 2),
            "mean_tokens_read": round(sum(read) / len(read), 2),
            "em_generated": round(sum(gen_em) / len(rows), 4) if scored else None,
            "em_prefill_same_injector": round(sum(pre_em) / len(rows), 4) if scored else None}


def run_levers(cfg: LeversBenchConfig, out: Path) -> dict:
    from kinject.prompts import general_messages, render

    set_threads(cfg.threads)
    setup = resolve_setup(cfg.source, cfg.artifacts, out / "_work")
    pipe = _pipe(setup, cfg, cache_size=max(1024, cfg.n_repeat))
    rows = [setup.rows[i % len(setup.rows)] for i in range(cfg.n_repeat)]
    scored = setup.source == "demo"
    cache = lever_cache(pipe, rows, cfg.max_new_tokens)
    cap = lever_cap(pipe, setup.rows[: cfg.n_cap], cfg.caps, cfg.max_new_tokens, scored)
    batching = lever_batching(pipe, rows, cfg.batch_sizes, cfg.max_new_tokens)
    prompt = render(pipe.base.tokenizer, general_messages(setup.rows[0]["question"]))
    static = lever_static_compile(pipe.base.model, pipe.base.tokenizer, prompt, cfg.decode_tokens, cfg.compile)
    prefill = (lever_prefill(pipe, setup.rows[: cfg.n_prefill], cfg.max_new_tokens, cfg.answer_prefix, scored)
               if cfg.n_prefill else None)
    result = {"config": cfg.model_dump(), "setup": setup.describe(), "cache": cache, "cap": cap,
              "batching": batching, "static_cache_compile": static, "prefill_memories": prefill}
    lines = [f"Inputs: {setup.source}.", "", "## Memory cache (GagPipeline, LRU per question)", "",
             f"{cache['questions']} questions: cold {cache['cold_s']} s, warm {cache['warm_s']} s "
             f"(predicted {cache['predicted_warm_s']} s = base side alone), speedup {cache['speedup']}x "
             f"(predicted {cache['predicted_speedup']}x), identical answers: {cache['identical_answers']}", "",
             "## Background-length cap" + ("" if scored else " (random models: EM meaningless)"), ""]
    lines += md_table(cap, ["cap", "em", "mean_background_tokens", "share_at_cap", "ms_per_question", "n"])
    lines += ["", "## Batching of the background generation", ""]
    lines += md_table(batching["runs"], ["batch_size", "seconds", "questions_per_s", "expert_ms_per_decode_step"])
    lines += ["", f"predicted speedup {batching['predicted_speedup']}x, measured {batching['measured_speedup']}x, "
              f"identical answers: {batching['identical_answers']}", "", "## Static KV cache + torch.compile", ""]
    lines += md_table(static, ["variant", "first_call_s", "prefill_ms", "decode_ms_per_token",
                               "decode_speedup_vs_dynamic"])
    if prefill:
        lines += ["", "## Memories without decoding (batch 1, p50 ms)", "",
                  f"{prefill['questions']} questions: generated backgrounds {prefill['generated_e2e_ms_p50']} ms, "
                  f"prefill memories {prefill['prefill_e2e_ms_p50']} ms (predicted "
                  f"{prefill['predicted_prefill_e2e_ms_p50']} ms), speedup {prefill['speedup']}x (predicted "
                  f"{prefill['predicted_speedup']}x); EM generated {prefill['em_generated']}, prefill with the same "
                  f"injector {prefill['em_prefill_same_injector']} (not the lever's accuracy: see the module doc)"]
    write_outputs(out, "levers", result, lines)
    return result
