"""`kinject bench methods`: per question, for base (closed book), rag_k{1,3,5}, text_injection,
gag and grip: prompt tokens, expert tokens generated, prefill and decode time, end-to-end
latency (p50/p90) at batch 1, and batched throughput; plus the latency targets as ratios
computed from this one run.

Methods are interleaved question by question (every method answers question i before any
answers question i+1), so a change of load on the shared machine hits all of them alike.
Components are used directly (prompts, generation, retrieval, `GagPipeline`, `GripAgent`), not
the eval harness, because prefill and decode must be timed apart (`kinject.bench.timing`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from kinject.bench.common import md_table, mean, pct, ratio, set_threads, write_outputs
from kinject.bench.config import MethodsBenchConfig
from kinject.bench.setup import Setup, build_index, open_grip_index, resolve_setup
from kinject.bench.timing import StepClock, prefill_forward_ms, split_times, timed_texts
from kinject.eval.metrics import exact_match
from kinject.prompts import general_messages, knowledge_messages, render


class Ctx:
    """Everything loaded once: the GAG pipeline (its base and expert serve every method)."""

    def __init__(self, cfg: MethodsBenchConfig, setup: Setup, work: Path):
        from kinject.gag.pipeline import GagPipeline

        self.cfg, self.setup = cfg, setup
        # cache off: every question pays for its background (the cache is a lever, timed apart)
        self.pipe = GagPipeline.from_pretrained(setup.expert, setup.base, setup.injector, setup.system, "",
                                cfg.max_background_tokens, "cpu", "float32", cfg.batch_size, cache_size=0)
        self.base, self.tok = self.pipe.base.model, self.pipe.base.tokenizer
        self.expert, self.etok = self.pipe.expert, self.pipe.expert_tok
        self.retriever = build_index(setup.passages, work / "private_index") if _wants(cfg, "rag") else None
        self.grip_retriever = open_grip_index(setup, work) if "grip" in cfg.methods else None
        self.grip_model = self.grip_tok = None
        if "grip" in cfg.methods:
            from kinject.models import load_causal_lm

            self.grip_model, self.grip_tok = load_causal_lm(setup.grip_model, device="cpu", dtype="float32")

    def ids(self, tok, text: str) -> torch.Tensor:
        return tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def _wants(cfg, name: str) -> bool:
    return name in cfg.methods or (name == "rag" and any(m.startswith("rag") for m in cfg.methods))


def method_names(cfg: MethodsBenchConfig) -> list[str]:
    out = []
    for m in cfg.methods:
        out += [f"rag_k{k}" for k in cfg.ks] if m == "rag" else [m]
    return out


# ---------------------------------------------------------------- one question, one method
def _answer_record(ctx: Ctx, prompt: str, golds, extra: dict, t_start: float) -> dict:
    gens, tm = timed_texts(ctx.base, ctx.tok, [prompt], ctx.cfg.max_new_tokens)
    e2e = (time.perf_counter() - t_start) * 1000
    pf = prefill_forward_ms(ctx.base, ctx.cfg.prefill_repeats, input_ids=ctx.ids(ctx.tok, prompt))
    g = gens[0]
    return {"prompt_tokens": g.n_prompt_tokens, "new_tokens": g.n_new_tokens, "expert_tokens": 0,
            "prefill_forward_ms": pf, "gen_prefill_ms": tm["prefill_ms"], "decode_ms": tm["decode_ms"],
            "decode_steps": tm["decode_steps"], "e2e_ms": e2e, "em": exact_match(g.text, golds), **extra}


def bench_base(ctx: Ctx, row: dict) -> dict:
    t = time.perf_counter()
    return _answer_record(ctx, render(ctx.tok, general_messages(row["question"])), row["answer"], {}, t)


def bench_rag(ctx: Ctx, row: dict, k: int) -> dict:
    from kinject.retrieval.rag import rag_messages

    t = time.perf_counter()
    hits = ctx.retriever.search(row["question"], k)
    r_ms = (time.perf_counter() - t) * 1000
    prompt = render(ctx.tok, rag_messages(row["question"], hits, row.get("instruction") or "", style="plain"))
    return _answer_record(ctx, prompt, row["answer"], {"retrieval_ms": r_ms}, t)


def _expert_background(ctx: Ctx, question: str):
    from kinject.memory.background import background_prompts

    spec = ctx.pipe.background  # written as GAG's backgrounds are
    prompts = background_prompts(ctx.etok, [question], spec.system, spec.request)
    gens, tm = timed_texts(ctx.expert, ctx.etok, prompts, spec.max_new_tokens)
    return prompts, gens[0], tm


def bench_text_injection(ctx: Ctx, row: dict) -> dict:
    t = time.perf_counter()
    _, bg, etm = _expert_background(ctx, row["question"])
    prompt = render(ctx.tok, knowledge_messages(row["question"], bg.text, row.get("instruction") or ""))
    rec = _answer_record(ctx, prompt, row["answer"], {"expert_ms": etm["total_ms"], "expert_prefill_ms":
                                                      etm["prefill_ms"], "expert_decode_ms": etm["decode_ms"]}, t)
    rec["expert_tokens"] = bg.n_new_tokens
    return rec


def injector_inputs(injector, states: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The injector's forward kwargs for online memories, as `GagPipeline.memories` builds them:
    padded trajectories for an attention-pooling injector (the shipped one), else the stored
    slots' compression."""
    from kinject.memory.compress import compress
    from kinject.memory.store import pad_trajectories

    c = injector.config
    if injector.needs_trajectories:
        traj, mask = pad_trajectories(states, len(c.layers), c.expert_hidden)
        return {"traj": traj, "traj_mask": mask}
    return {"slots": torch.stack([compress(s, c.slots, c.store_pooling, c.tau) for s in states])}


@torch.no_grad()
def bench_gag(ctx: Ctx, row: dict) -> dict:
    """End to end through `GagPipeline.answer`, then the same question by components for the
    breakdown (expert generation, state read, memory inputs (slot compression or trajectory
    padding), injector (with its attention pooling when it has one), base prefill/decode)."""
    from kinject.memory.background import continuation_states

    q, instr = row["question"], row.get("instruction")
    pipe, icfg = ctx.pipe, ctx.pipe.injector.config
    t = time.perf_counter()
    ans = pipe.answer([q], [instr], max_new_tokens=ctx.cfg.max_new_tokens)[0]
    e2e = (time.perf_counter() - t) * 1000
    prompts, bg, etm = _expert_background(ctx, q)
    t1 = time.perf_counter()
    states = continuation_states(ctx.expert, ctx.etok, prompts, [bg.token_ids], icfg.layers)
    t2 = time.perf_counter()
    inputs = injector_inputs(pipe.injector, states)
    t3 = time.perf_counter()
    z = pipe.injector(**inputs)
    t4 = time.perf_counter()
    clock = StepClock()
    from transformers import LogitsProcessorList

    t5 = time.perf_counter()
    g = pipe.base.generate([q], z, ctx.cfg.max_new_tokens, 1, [instr], logits_processor=LogitsProcessorList([clock]))[0]
    tm = split_times(t5, time.perf_counter(), clock)
    ids = ctx.ids(ctx.tok, pipe.base.prompt_text(q, instr))
    pf = prefill_forward_ms(ctx.base, ctx.cfg.prefill_repeats, make_embeds=lambda: pipe.base.embed(ids, z))
    # the same prompt without its 4 slots: what the slots alone add to the base's prefill
    bare = ctx.ids(ctx.tok, render(ctx.tok, knowledge_messages(q, "", instr or pipe.base.instruction)))
    pf_bare = prefill_forward_ms(ctx.base, ctx.cfg.prefill_repeats, input_ids=bare)
    return {"prompt_tokens": int(ids.shape[1]), "new_tokens": g.n_new_tokens, "expert_tokens": bg.n_new_tokens,
            "prefill_forward_ms": pf, "gen_prefill_ms": tm["prefill_ms"], "decode_ms": tm["decode_ms"],
            "decode_steps": tm["decode_steps"], "e2e_ms": e2e, "em": exact_match(ans.answer, row["answer"]),
            "expert_ms": etm["total_ms"], "expert_prefill_ms": etm["prefill_ms"],
            "expert_decode_ms": etm["decode_ms"], "states_ms": (t2 - t1) * 1000, "compress_ms": (t3 - t2) * 1000,
            "injector_ms": (t4 - t3) * 1000, "prefill_no_slots_ms": pf_bare,
            "prompt_tokens_no_slots": int(bare.shape[1]), "same_answer_as_pipeline": g.text == ans.answer}


class _TimedSearch:
    def __init__(self, retriever):
        self.retriever, self.ms = retriever, 0.0

    def batch_search(self, queries, k):
        t = time.perf_counter()
        try:
            return self.retriever.batch_search(queries, k)
        finally:
            self.ms += (time.perf_counter() - t) * 1000


def _grip_agent(ctx: Ctx, batch_size: int, acc: dict | None):
    from kinject.grip.agent import AgentSettings, GripAgent, check_control_tokens
    from kinject.grip.format import SOLVED

    cfg, model, tok = ctx.cfg, ctx.grip_model, ctx.grip_tok
    check_control_tokens(tok)
    stops = [tok.convert_tokens_to_ids(SOLVED)]
    settings = AgentSettings(max_rounds=cfg.grip_max_rounds, top_k=cfg.grip_top_k,
                             max_new_tokens=cfg.grip_max_new_tokens, batch_size=batch_size)

    def generate(prompts: list[str]) -> list[str]:  # as GripAgent.from_model, with the step clock
        gens, tm = timed_texts(model, tok, prompts, settings.max_new_tokens, batch_size,
                               skip_special_tokens=False, extra_stop_ids=stops)
        if acc is not None:
            acc["rounds"] += 1
            acc["prompt_tokens"] += sum(g.n_prompt_tokens for g in gens)
            acc["new_tokens"] += sum(g.n_new_tokens for g in gens)
            for key in ("prefill_ms", "decode_ms", "decode_steps"):
                acc[key] += tm[key]
            acc["last_prompt"] = prompts[-1]
        return [g.text for g in gens]

    search = _TimedSearch(ctx.grip_retriever)
    return GripAgent(generate, lambda msgs: render(tok, msgs), search, settings), search


def bench_grip(ctx: Ctx, row: dict) -> dict:
    acc = {"rounds": 0, "prompt_tokens": 0, "new_tokens": 0, "prefill_ms": 0.0, "decode_ms": 0.0, "decode_steps": 0}
    agent, search = _grip_agent(ctx, 1, acc)
    t = time.perf_counter()
    ep = agent.run([row["question"]])[0]
    e2e = (time.perf_counter() - t) * 1000
    pf = prefill_forward_ms(ctx.grip_model, ctx.cfg.prefill_repeats, input_ids=ctx.ids(ctx.grip_tok, acc["last_prompt"]))
    return {"prompt_tokens": acc["prompt_tokens"], "new_tokens": acc["new_tokens"], "expert_tokens": 0,
            "prefill_forward_ms": pf, "gen_prefill_ms": acc["prefill_ms"], "decode_ms": acc["decode_ms"],
            "decode_steps": acc["decode_steps"], "e2e_ms": e2e, "retrieval_ms": search.ms, "rounds": acc["rounds"],
            "retrievals": ep.n_retrievals, "em": exact_match(ep.answer, row["answer"])}


def bench_one(ctx: Ctx, method: str, row: dict, grip_row: dict) -> dict:
    if method == "base":
        return bench_base(ctx, row)
    if method.startswith("rag_k"):
        return bench_rag(ctx, row, int(method[5:]))
    if method == "text_injection":
        return bench_text_injection(ctx, row)
    if method == "gag":
        return bench_gag(ctx, row)
    if method == "grip":
        return bench_grip(ctx, grip_row)
    raise ValueError(method)


# ---------------------------------------------------------------- batched throughput
def throughput(ctx: Ctx, method: str, rows: list[dict], grip_rows: list[dict], bs: int) -> dict:
    from kinject.generation import generate_texts
    from kinject.memory.background import background_prompts
    from kinject.retrieval.rag import rag_messages

    cfg = ctx.cfg
    qs = [r["question"] for r in rows]
    t = time.perf_counter()
    if method == "base":
        generate_texts(ctx.base, ctx.tok, [render(ctx.tok, general_messages(q)) for q in qs], cfg.max_new_tokens, bs)
    elif method.startswith("rag_k"):
        hits = ctx.retriever.batch_search(qs, int(method[5:]))
        prompts = [render(ctx.tok, rag_messages(q, h, r.get("instruction") or "", style="plain"))
                   for q, h, r in zip(qs, hits, rows)]
        generate_texts(ctx.base, ctx.tok, prompts, cfg.max_new_tokens, bs)
    elif method == "text_injection":
        spec = ctx.pipe.background
        bgs = generate_texts(ctx.expert, ctx.etok, background_prompts(ctx.etok, qs, spec.system, spec.request),
                             spec.max_new_tokens, bs)
        prompts = [render(ctx.tok, knowledge_messages(q, b.text, r.get("instruction") or ""))
                   for q, b, r in zip(qs, bgs, rows)]
        generate_texts(ctx.base, ctx.tok, prompts, cfg.max_new_tokens, bs)
    elif method == "gag":
        old = ctx.pipe.batch_size
        ctx.pipe.batch_size = bs
        try:
            ctx.pipe.answer(qs, [r.get("instruction") for r in rows], max_new_tokens=cfg.max_new_tokens)
        finally:
            ctx.pipe.batch_size = old
    elif method == "grip":
        qs = [r["question"] for r in grip_rows]
        agent, _ = _grip_agent(ctx, bs, None)
        agent.run(qs)
    secs = time.perf_counter() - t
    return {"questions": len(qs), "batch_size": bs, "seconds": round(secs, 3),
            "questions_per_s": round(len(qs) / secs, 2)}


# ---------------------------------------------------------------- summary and targets
def summarize(records: list[dict]) -> dict:
    col = lambda k: [r[k] for r in records if k in r]  # noqa: E731
    dec_steps = sum(col("decode_steps"))
    out = {"n": len(records), "prompt_tokens_mean": mean(col("prompt_tokens")),
           "expert_tokens_mean": mean(col("expert_tokens")), "new_tokens_mean": mean(col("new_tokens")),
           "prefill_forward_ms_mean": mean(col("prefill_forward_ms")),
           "prefill_forward_ms_p50": pct(col("prefill_forward_ms"), 50),
           "gen_prefill_ms_p50": pct(col("gen_prefill_ms"), 50), "decode_ms_p50": pct(col("decode_ms"), 50),
           "decode_ms_per_token": round(sum(col("decode_ms")) / dec_steps, 3) if dec_steps else None,
           "e2e_ms_p50": pct(col("e2e_ms"), 50), "e2e_ms_p90": pct(col("e2e_ms"), 90), "em": mean(col("em"))}
    for k in ("expert_ms", "expert_prefill_ms", "expert_decode_ms", "states_ms", "compress_ms", "injector_ms",
              "retrieval_ms", "rounds", "retrievals", "prefill_no_slots_ms", "prompt_tokens_no_slots"):
        if col(k):
            out[f"{k}_mean"] = mean(col(k))
    return out


def _per_q_ratio(a: list[dict], b: list[dict], key: str) -> float | None:
    vals = [x[key] / y[key] for x, y in zip(a, b) if y.get(key)]
    return pct(vals, 50) if vals else None


def targets(per_q: dict[str, list[dict]], summary: dict[str, dict]) -> dict:
    """The latency targets (docs/performance.md), each computed from this run's numbers (ratio of
    means and the median of per-question ratios: methods answered the same questions side by
    side)."""
    out: dict = {}
    if "gag" not in summary:
        return out
    g = summary["gag"]
    for other, limit in (("base", 1.05), ("rag_k3", 1 / 3)):
        if other not in summary:
            continue
        v = ratio(g["prefill_forward_ms_mean"], summary[other]["prefill_forward_ms_mean"])
        out[f"gag_prefill_over_{other}_prefill"] = {
            "value": v, "median_per_question": _per_q_ratio(per_q["gag"], per_q[other], "prefill_forward_ms"),
            "target": f"<= {round(limit, 3)}", "met": v is not None and v <= limit,
            "prompt_tokens_ratio": ratio(g["prompt_tokens_mean"], summary[other]["prompt_tokens_mean"])}
    v = ratio(g["prefill_forward_ms_mean"], g.get("prefill_no_slots_ms_mean"))
    out["gag_prefill_over_same_prompt_without_slots"] = {
        "value": v, "median_per_question": pct([x["prefill_forward_ms"] / x["prefill_no_slots_ms"] for x in per_q["gag"]], 50),
        "target": "<= 1.05", "met": v is not None and v <= 1.05,
        "note": "the cost of the 4 slots alone: GAG's prompt vs the same prompt with empty knowledge"}
    if "rag_k3" in summary:
        r = summary["rag_k3"]
        out["gag_e2e_over_rag_k3_e2e_p50"] = {
            "value": ratio(g["e2e_ms_p50"], r["e2e_ms_p50"]),
            "median_per_question": _per_q_ratio(per_q["gag"], per_q["rag_k3"], "e2e_ms"),
            "note": "GAG includes the expert writing its background (expert_tokens_mean tokens)"}
        base_side = [x["e2e_ms"] - x["expert_ms"] - x["states_ms"] for x in per_q["gag"]]
        out["gag_base_side_e2e_over_rag_k3_e2e_p50"] = {"value": ratio(pct(base_side, 50), r["e2e_ms_p50"])}
    return out


def run_methods(cfg: MethodsBenchConfig, out: Path, progress: bool = True) -> dict:
    from rich.progress import Progress

    set_threads(cfg.threads)
    work = out / "_work"
    setup = resolve_setup(cfg.source, cfg.artifacts, work)
    ctx = Ctx(cfg, setup, work)
    names = method_names(cfg)
    rows = setup.rows[: cfg.n_questions]
    grip_rows = setup.grip_rows or rows
    for name in names:  # warm-up: first calls allocate and import
        bench_one(ctx, name, rows[0], grip_rows[0])
    per_q: dict[str, list[dict]] = {n: [] for n in names}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("methods, batch 1", total=len(rows))
        for i, row in enumerate(rows):
            for name in names:
                per_q[name].append({"i": i, **bench_one(ctx, name, row, grip_rows[i % len(grip_rows)])})
            bar.advance(task)
    n = cfg.n_throughput
    trows = [setup.rows[i % len(setup.rows)] for i in range(n)]
    tgrip = [grip_rows[i % len(grip_rows)] for i in range(n)]
    thr = {name: throughput(ctx, name, trows, tgrip, cfg.batch_size) for name in names}
    summary = {name: {**summarize(per_q[name]), "throughput_questions_per_s": thr[name]["questions_per_s"]}
               for name in names}
    result = {"config": cfg.model_dump(), "setup": setup.describe(), "datasets": {
                  "private": "materials dev" if setup.source == "demo" else "synthetic",
                  "grip": "wiki test (GRIP's domain)" if setup.source == "demo" else "synthetic"},
              # which GAG was timed: the published numbers must name the injector they describe
              "gag_injector": ctx.pipe.injector.config.model_dump(
                  include={"pooling", "attention_heads", "residual_mix", "slots", "layers"}),
              "summary": summary, "targets": targets(per_q, summary), "throughput": thr, "per_question": per_q}
    lines = [f"Inputs: {setup.source} ({setup.base}); {len(rows)} questions at batch 1, "
             f"throughput over {n} at batch {cfg.batch_size}. Times in ms.", ""]
    cols = ["method", "prompt_tokens_mean", "expert_tokens_mean", "prefill_forward_ms_mean", "gen_prefill_ms_p50",
            "decode_ms_p50", "e2e_ms_p50", "e2e_ms_p90", "throughput_questions_per_s", "em"]
    lines += md_table([{"method": k, **v} for k, v in summary.items()], cols)
    lines += ["", "Targets (this run):", ""]
    lines += [f"- {k}: {v.get('value')} (per-question median {v.get('median_per_question')}"
              f"{', target ' + v['target'] + (' met' if v['met'] else ' NOT met') if 'target' in v else ''})"
              for k, v in result["targets"].items()]
    write_outputs(out, "methods", result, lines)
    return result
