"""Demo stage `eval` (order 100): every method whose inputs the earlier stages made, one report.

Runs `configs/eval/tiny.yaml` (datasets, metrics) with the methods built here from
`ctx.artifacts` (`demo_methods`): `base` (all but mixed), `rag_k1` / `rag_k3` on
general + wiki and on the private domains over their own knowledge bases, `grip` on general + wiki, `expert` / `text_injection` / `gag` on the private domains, `mixed` on the mixed
online set (routing accuracy + confusion matrix), plus whatever later stages append to
`ctx.artifacts["eval_methods"]` (`{"name", "options", "datasets"}` entries; the baselines stage
adds `lora`). A method whose inputs are missing is left out and named in the summary. The
stages' loss-curve PNGs under the demo's output dir go into the report. QUICK caps each dataset
at 32 questions, the full preset at 120. The harness skips itself when config and inputs are
unchanged.
"""

from __future__ import annotations

from pathlib import Path

from kinject.errors import UserError
from kinject.recipes.engine import DemoContext, stage
from kinject.resources import shipped

TINY_CONFIG = shipped("configs/eval/tiny.yaml")
PRIVATE = ("materials", "adjuvant")
OPEN = ("general", "wiki_1hop", "wiki_2hop")
MIXED = ("mixed",)


def memory_of(artifacts: dict, domain: str) -> dict:
    """`{"memory": <the domain's memory store>}` when there is one: online backgrounds (gag,
    text_injection, mixed) are written with its recorded background spec, as the stored ones were."""
    mem = artifacts.get(f"memory_{domain}")
    return {"memory": str(mem)} if mem else {}


def _grip_agent_settings() -> dict:
    """The tiny GRIP agent settings (`configs/grip/eval_tiny.yaml`), so the report's `grip` row is
    the agent the grip stage measured (top_k 1, first_query question on the tiny base)."""
    import yaml

    agent = yaml.safe_load((shipped("configs/grip/eval_tiny.yaml")).read_text()).get("agent", {})
    return {k: agent[k] for k in ("max_rounds", "top_k", "max_new_tokens", "first_query") if k in agent}


def demo_methods(artifacts: dict) -> tuple[list[dict], dict[str, str]]:
    """(method entries for the eval config, {method: why it is left out})."""
    from kinject.expert.evaluate import default_instruction

    base = str(Path(artifacts["foundation"]) / "base")
    entries: list[dict] = [{"name": "base", "options": {"model": base}, "datasets": [*PRIVATE, *OPEN]}]
    skipped: dict[str, str] = {}
    index = artifacts.get("wiki_index")
    private = artifacts.get("private_index")  # the private domains' own corpus (retrieval stage)
    if index:
        for k in (1, 3):
            opts = {"model": base, "index": str(index)}
            if private:
                opts["domain_indexes"] = {d: str(private) for d in PRIVATE}
            entries.append({"name": f"rag_k{k}", "options": opts,
                            "datasets": [*PRIVATE, *OPEN] if private else list(OPEN)})
    else:
        skipped["rag_k1, rag_k3"] = "no wiki_index (retrieval stage)"
    experts = {d: str(artifacts[f"expert_{d}"]) for d in PRIVATE if artifacts.get(f"expert_{d}")}
    if experts:
        doms = list(experts)
        entries.append({"name": "expert", "options": {"domains": experts}, "datasets": doms})
        entries.append({"name": "text_injection", "datasets": doms, "options": {
            "base": base, "domains": {d: {"expert": e, **memory_of(artifacts, d)} for d, e in experts.items()}}})
    else:
        skipped["expert, text_injection"] = "no expert_<domain> (expert stage)"
    gag = {d: {"expert": e, "injector": str(artifacts[f"injector_{d}"]), **memory_of(artifacts, d)}
           for d, e in experts.items() if artifacts.get(f"injector_{d}")}
    if gag:
        entries.append({"name": "gag", "options": {"base": base, "domains": gag}, "datasets": list(gag)})
    else:
        skipped["gag"] = "no injector_<domain> (gag stage)"
    grip = artifacts.get("grip_rl_model") or artifacts.get("grip_model")
    if grip and index:
        entries.append({"name": "grip", "options": {"model": str(grip), "index": str(index), **_grip_agent_settings()},
                        "datasets": list(OPEN)})
    else:
        skipped["grip"] = "no grip_model (grip stage) or wiki_index"
    banks = artifacts.get("ppr_banks")
    if banks and set(gag) == set(PRIVATE):
        domains = {d: {**g, "instruction": default_instruction(g["expert"])} for d, g in gag.items()}
        entries.append({"name": "mixed", "options": {"banks": str(banks), "base": base, "domains": domains},
                        "datasets": list(MIXED)})
    else:
        skipped["mixed"] = "needs ppr_banks (ppr stage) and a GAG injector for every private domain"
    for extra in artifacts.get("eval_methods", []) or []:  # appended by later stages (e.g. lora)
        entries = [e for e in entries if e["name"] != extra["name"]] + [dict(extra)]
    return entries, skipped


LOGS = ("log_history.json", "train_log.json", "history.jsonl")  # trainer logs with step + loss


def curve_files(out_root: Path) -> dict[str, str]:
    """label -> curve source for every training run under the demo output dir (eval excluded):
    its loss-curve PNG, else its trainer log (the report plots it)."""
    found: dict[str, str] = {}
    runs = sorted({p.parent for pat in ("*curve*.png", *LOGS) for p in out_root.glob(f"*/**/{pat}")})
    for run in runs:
        rel = run.relative_to(out_root)
        if rel.parts[0] == "eval" or any("checkpoint" in part for part in rel.parts):
            continue
        pngs = sorted(run.glob("*curve*.png"))
        logs = [run / name for name in LOGS if (run / name).is_file()]
        if pngs or logs:
            found[" ".join(rel.parts)] = str((pngs or logs)[0])
    return found


@stage("eval", order=100, help="every method x dataset on the tiny world: results.jsonl, report.md, plots")
def eval_stage(ctx: DemoContext, out: Path) -> None:
    from kinject.config import load_config
    from kinject.eval.config import EvalConfig, MethodEntry
    from kinject.eval.harness import run_eval

    world, foundation = ctx.artifacts.get("world"), ctx.artifacts.get("foundation")
    if world is None or foundation is None:
        raise UserError("demo stage 'eval' needs the world and foundation models (run `kinject demo` with the "
                        "'world' stage, or `kinject world build` and `kinject world pretrain`)")
    base = Path(foundation) / "base"
    if not (base / "config.json").is_file():
        raise UserError(f"demo stage 'eval': no base model at {base} (make it with `kinject world pretrain`)")
    cfg = load_config(TINY_CONFIG, [f"data_root={world}", f"limit={32 if ctx.quick else 120}"], expect=EvalConfig)
    entries, skipped = demo_methods(dict(ctx.artifacts))
    cfg.methods = [MethodEntry(**m) for m in entries]
    used = {d for m in cfg.methods for d in (m.datasets or [x.name for x in cfg.datasets])}
    cfg.datasets = [d for d in cfg.datasets if d.name in used]  # e.g. no mixed set without `mixed`
    cfg.training_curves = {k: Path(v) for k, v in curve_files(Path(ctx.out)).items()}
    rows = run_eval(cfg, out, source=str(TINY_CONFIG))
    ctx.artifacts["eval"] = out
    ctx.summary["eval: report"] = out / "report.md"
    ctx.summary["eval: methods x datasets"] = f"{len(cfg.methods)} x {len(cfg.datasets)} ({len(rows)} numbers)"
    for names, why in skipped.items():
        ctx.summary[f"eval: left out {names}"] = why
