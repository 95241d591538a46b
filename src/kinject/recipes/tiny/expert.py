"""Demo stage `expert` (order 50): DAPT + QA-SFT of both private domains' experts.

Starts from the shipped expert init (`ctx.artifacts["foundation"]/expert_init`) and the world
(`ctx.artifacts["world"]`), with the tiny presets `configs/gag/<domain>_{dapt,sft}_tiny.yaml`
(paths replaced by the demo's). Sets `ctx.artifacts["expert_<domain>"]` to the SFT expert and
scores it on dev / dev_para (`<out>/eval/results.jsonl`). Each step skips itself when its
inputs are unchanged. `--quick`: shorter trainings.
"""

from __future__ import annotations

from pathlib import Path

from kinject.recipes.engine import DemoContext, stage
from kinject.resources import shipped

DOMAINS = ("materials", "adjuvant")
# QUICK: a smoke-sized run of the same recipe (target <= 90 s on a quiet CPU; full <= 330 s)
QUICK = {"dapt": ["train.max_steps=900", "train.eval_steps=450"], "sft": ["train.max_steps=15", "train.eval_steps=15"]}
QUICK_EVAL_LIMIT = 60  # questions per split scored in QUICK


def train_domain_expert(domain: str, world: Path, init: Path, out: Path, dapt_overrides: list[str],
                        sft_overrides: list[str]) -> Path:
    """DAPT then SFT of one domain's expert (a worker of `run_parallel`; the preset's overrides
    are passed in); returns the SFT dir."""
    from kinject.config import load_config
    from kinject.expert.config import DaptConfig, SftConfig
    from kinject.expert.dapt import run_dapt
    from kinject.expert.sft import run_sft

    ddir = world / f"{domain}_domain"
    dapt = load_config(shipped(f"configs/gag/{domain}_dapt_tiny.yaml"), [
        f"model={init}", f"corpus={ddir / 'knowledge_base.jsonl'}", f"out={out / f'{domain}_dapt'}",
        f"qa_mix.path={ddir / 'qa_train.jsonl'}", f"probe.path={ddir / 'qa_dev.jsonl'}", "probe.limit=60",
        *dapt_overrides,
    ], expect=DaptConfig)
    run_dapt(dapt)
    sft = load_config(shipped(f"configs/gag/{domain}_sft_tiny.yaml"), [
        f"model={dapt.out}", f"data={ddir / 'qa_train.jsonl'}", f"out={out / f'{domain}_sft'}",
        *sft_overrides,
    ], expect=SftConfig)
    return run_sft(sft)


@stage("expert", order=50, help="GAG experts: Stage I DAPT + Stage II QA-SFT per private domain")
def expert_stage(ctx: DemoContext, out: Path) -> None:
    from kinject.expert.evaluate import evaluate_files
    from kinject.recipes.engine import run_parallel
    from kinject.runs import RunRecorder, inputs_hash, is_complete

    world, init = Path(ctx.artifacts["world"]), Path(ctx.artifacts["foundation"]) / "expert_init"
    # the two domains are independent: one worker process per core
    preset = (QUICK["dapt"], QUICK["sft"]) if ctx.quick else ([], [])
    paths = run_parallel(train_domain_expert, [(d, world, init, out, *preset) for d in DOMAINS])
    experts = dict(zip(DOMAINS, map(Path, paths)))
    for domain, path in experts.items():
        ctx.artifacts[f"expert_{domain}"] = path

    eval_dir = out / "eval"
    h = inputs_hash({"quick": ctx.quick}, *(e / "manifest.json" for e in experts.values()))
    if not is_complete(eval_dir, h):
        rec = RunRecorder(eval_dir, "demo expert eval", {"domains": list(DOMAINS)})
        rows = []
        for domain, model in experts.items():
            ddir = world / f"{domain}_domain"
            files = {s: ddir / f"qa_{s}.jsonl" for s in ("dev", "dev_para")}
            with rec.timer(f"eval_{domain}"):
                rows += evaluate_files(model, files, eval_dir / domain, limit=QUICK_EVAL_LIMIT if ctx.quick else None)
        rec.metrics = {f"{r.dataset}/{r.split}/{r.metric}": r.value for r in rows}
        from kinject.eval.results import write_results

        write_results(eval_dir / "results.jsonl", rows, append=False)
        rec.write(inputs_hash=h)
    import json

    metrics = json.loads((eval_dir / "manifest.json").read_text())["metrics"]
    for domain in DOMAINS:
        ctx.summary[f"expert {domain}: dev EM / dev_para EM"] = (
            f"{metrics[f'{domain}/dev/em']:.2f} / {metrics[f'{domain}/dev_para/em']:.2f}"
        )
