"""Demo stage `gag` (order 70): Stage III per private domain, then GAG on dev / dev_para.

Per domain: alignment phase on the world's general items (memories from `align_memory_<domain>`)
then the domain phase (`memory_<domain>`), with `configs/gag/<domain>_stage3_tiny.yaml`, the
shipped tiny base (`ctx.artifacts["foundation"]/base`) frozen. Then GAG is scored with the
stored dev memories, with the zeroed/foreign-memory controls, into `<out>/<domain>/eval/`
and `<out>/results.jsonl`. Sets `ctx.artifacts["injector_<domain>"]`. Skips itself when
inputs are unchanged; a run started from other inputs is restarted (its checkpoints dropped;
`kinject.gag.stage3`).
"""

from __future__ import annotations

from pathlib import Path

from kinject.recipes.engine import DemoContext, stage
from kinject.resources import shipped

DOMAINS = ("materials", "adjuvant")
QUICK = ["alignment.max_steps=250", "alignment.limit=4000", "domain.max_steps=60"]  # memory QUICK builds 500 dev + 4000 align items
SPLITS = {"dev": "{d}", "dev_para": "{d}_para"}  # world split -> results dataset name


def train_domain_injector(domain: str, world: Path, base: Path, mem: Path, amem: Path, out: Path,
                          overrides: list[str]) -> Path:
    """Stage III + evaluation of one domain (a worker of `run_parallel`; the preset's overrides
    are passed in); returns the run dir."""
    from kinject.config import load_config
    from kinject.gag.config import Stage3Config
    from kinject.gag.stage3 import EvalSet, domain_paths, train_and_score
    from kinject.io import read_jsonl
    from kinject.runs import inputs_hash

    ddir = world / f"{domain}_domain"
    cfg = load_config(shipped(f"configs/gag/{domain}_stage3_tiny.yaml"),
                      [*domain_paths(world, domain, base, mem, amem, out), *overrides], expect=Stage3Config)
    h = inputs_hash(cfg, mem / "manifest.json", amem / "manifest.json", base)

    def eval_sets() -> list[EvalSet]:
        sets = [EvalSet(mem, read_jsonl(ddir / f"qa_{split}.jsonl"), name.format(d=domain), split, split)
                for split, name in SPLITS.items()]
        # the channel alone: fresh general facts the expert only read (align_dev memories are
        # built with the alignment store), so no expert knowledge is involved
        align_dev = world / "general" / "align_dev.jsonl"
        if align_dev.is_file():
            sets.append(EvalSet(amem, read_jsonl(align_dev)[:200], "align_fresh", "dev", "align_dev"))
        return sets

    return train_and_score(cfg, h, "demo gag", eval_sets)


@stage("gag", order=70, help="GAG Stage III (alignment + domain) on the frozen base, scored on dev")
def gag_stage(ctx: DemoContext, out: Path) -> None:
    from kinject.eval.results import read_results, write_results
    from kinject.recipes.engine import run_parallel

    world, base = Path(ctx.artifacts["world"]), Path(ctx.artifacts["foundation"]) / "base"
    jobs = [(d, world, base, Path(ctx.artifacts[f"memory_{d}"]), Path(ctx.artifacts[f"align_memory_{d}"]), out,
             QUICK if ctx.quick else []) for d in DOMAINS]
    all_rows = []
    for domain, run_dir in zip(DOMAINS, run_parallel(train_domain_injector, jobs)):
        rows = read_results(run_dir / "eval" / "results.jsonl")
        all_rows += rows
        ctx.artifacts[f"injector_{domain}"] = run_dir / "injector"
        em = {(r.dataset, r.method): r.value for r in rows if r.metric == "em"}
        d, dp = domain, f"{domain}_para"
        ctx.summary[f"gag {domain}: dev EM (zeroed / foreign memories)"] = (
            f"{em[(d, 'gag')]:.2f} ({em[(d, 'gag_zero_memory')]:.2f} / {em[(d, 'gag_foreign_memory')]:.2f})")
        ctx.summary[f"gag {domain}: dev_para EM"] = f"{em[(dp, 'gag')]:.2f}"
        if ("align_fresh", "gag") in em:
            ctx.summary[f"gag {domain}: fresh general facts EM (zeroed)"] = (
                f"{em[('align_fresh', 'gag')]:.2f} ({em[('align_fresh', 'gag_zero_memory')]:.2f})")
    write_results(out / "results.jsonl", all_rows, append=False)
