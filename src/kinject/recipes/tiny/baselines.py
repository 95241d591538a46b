"""Demo stage `baselines` (order 75): the LoRA parametric baseline per private domain.

A LoRA adapter on the shipped tiny base (`ctx.artifacts["foundation"]/base`) per domain, trained
on the world's `qa_train.jsonl` with `configs/baselines/<domain>_lora_tiny.yaml` (paths replaced
by the demo's), skipped when complete with the same inputs. Sets `ctx.artifacts["lora_<domain>"]`
and appends the `lora` method (both adapters, run on the private domains) to
`ctx.artifacts["eval_methods"]` for the eval stage. QUICK: 60 optimizer steps per domain.
"""

from __future__ import annotations

from pathlib import Path

from kinject.recipes.engine import DemoContext, stage
from kinject.resources import shipped

DOMAINS = ("materials", "adjuvant")
QUICK = ["train.max_steps=60", "train.eval_steps=30"]


@stage("baselines", order=75, help="LoRA baseline: the base fine-tuned on each private domain's QA train split",
       lane="side")
def baselines_stage(ctx: DemoContext, out: Path) -> None:
    import json

    from kinject.baselines.config import LoraBaselineConfig
    from kinject.baselines.lora import run_lora
    from kinject.config import load_config
    from kinject.errors import UserError

    world, foundation = ctx.artifacts.get("world"), ctx.artifacts.get("foundation")
    if world is None or foundation is None:
        raise UserError("demo stage 'baselines' needs the world and the foundation base (run the 'world' stage)")
    base = Path(foundation) / "base"
    adapters = {}
    for domain in DOMAINS:
        cfg = load_config(shipped(f"configs/baselines/{domain}_lora_tiny.yaml"), [
            f"base={base}", f"data={Path(world) / f'{domain}_domain' / 'qa_train.jsonl'}", f"out={out / domain}",
            *(QUICK if ctx.quick else [])], expect=LoraBaselineConfig)
        adapters[domain] = run_lora(cfg)
        ctx.artifacts[f"lora_{domain}"] = adapters[domain]
        m = json.loads((adapters[domain] / "manifest.json").read_text())["metrics"]
        ctx.summary[f"baselines lora {domain}: steps, best val loss"] = f"{m['steps']}, {m['best_val_loss']:.3f}"
    entry = {"name": "lora", "options": {"base": str(base), "domains": {d: str(a) for d, a in adapters.items()}},
             "datasets": list(DOMAINS)}
    methods = [e for e in ctx.artifacts.get("eval_methods", []) or [] if e["name"] != "lora"]  # type: ignore[union-attr]
    ctx.artifacts["eval_methods"] = [*methods, entry]  # type: ignore[assignment]
