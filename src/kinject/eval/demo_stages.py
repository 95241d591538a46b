"""Demo stage `eval` (order 100): every method available so far on the tiny world, one report.

Runs `configs/eval/tiny.yaml` with the world and foundation paths of the earlier stages. Methods:
`base` (the shipped foundation base) plus whatever later stages add to
`ctx.artifacts["eval_methods"]` (a list of `{"name": ..., "options": {...}}` entries, e.g. the
GAG stage appends `{"name": "gag", "options": {"checkpoint": ...}}`). QUICK caps each dataset at
32 questions, the full preset at 120 (the CPU budget of `make demo`). The harness skips itself
when config and inputs are unchanged.
"""

from __future__ import annotations

from pathlib import Path

from kinject.demo import DemoContext, stage
from kinject.errors import UserError

REPO = Path(__file__).resolve().parents[3]
TINY_CONFIG = REPO / "configs/eval/tiny.yaml"


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
    extra = [MethodEntry(**m) for m in ctx.artifacts.get("eval_methods", [])]  # type: ignore[union-attr]
    cfg.methods = [MethodEntry(name="base", options={"model": str(base)}), *extra]
    rows = run_eval(cfg, out, source=str(TINY_CONFIG))
    ctx.artifacts["eval"] = out
    ctx.summary["eval: report"] = out / "report.md"
    ctx.summary["eval: methods x datasets"] = f"{len(cfg.methods)} x {len(cfg.datasets)} ({len(rows)} numbers)"
