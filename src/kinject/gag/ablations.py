"""Stage III ablations: the losses (`nll` only vs `nll+sem+div`) and the number of
slots (1 vs 4), per private domain, on one set of expert memories.

`kinject gag ablate --config configs/gag/ablations_stage3_tiny.yaml` trains one injector per
(domain, variant) with the domain's shipped Stage III preset (`configs/gag/<d>_stage3_tiny.yaml`)
plus the variant's overrides, scores each on the dev split with the slot controls, and writes
`<out>/results.jsonl` (method = the variant name, e.g. `gag_nll_only`, `gag_slots1`; controls as
`<variant>_zero_memory` / `<variant>_foreign_memory`) and `<out>/table.md`.

Memories: `memory_root/<d>` and `memory_root/<d>_align` (as `kinject.memory.domains` writes
them) for the 4-slot variants; the 1-slot stores are built from the same expert
(`experts/<d>_sft`) with the shipped memory configs and `slots=1` into `stores_root/mem1/<d>`,
unless already complete. Every run skips itself when complete with the same inputs, so an
interrupted ablation resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from kinject.config import StageConfig, StrictModel, register_config
from kinject.eval.results import ResultRow
from kinject.log import get_logger
from kinject.resources import shipped

log = get_logger(__name__)


class Variant(StrictModel):
    slots: int = Field(4, ge=1)  # memory_root's stores if they have this many slots, else built ones
    overrides: list[str] = []  # Stage III config overrides (e.g. w_sem=0)


DEFAULT_VARIANTS = {
    "gag": Variant(),
    "gag_nll_only": Variant(overrides=["w_sem=0", "w_div=0"]),
    "gag_slots1": Variant(slots=1),
}


@register_config
class GagAblationConfig(StageConfig):
    kind: str = "gag_ablation"
    world: str  # the world dir (holds general/ and <d>_domain/)
    base: str  # the frozen base
    experts: str  # holds <d>_sft (the experts that wrote memory_root's stores)
    memory_root: str  # holds <d> and <d>_align (4 slots)
    stores_root: str  # where stores with other slot counts are built (<root>/mem<S>/<d>)
    out: str
    domains: list[str] = ["materials", "adjuvant"]
    variants: dict[str, Variant] = DEFAULT_VARIANTS
    stage3_overrides: list[str] = []  # applied to every run (e.g. a shorter schedule)
    splits: list[str] = ["dev"]


def memory_dirs(cfg: GagAblationConfig, domain: str, slots: int) -> tuple[Path, Path]:
    """(domain store, alignment store) with `slots` slots, building them when needed."""
    from kinject.memory.domains import build_domain_stores
    from kinject.memory.store import MemoryStore

    root = Path(cfg.memory_root)
    if MemoryStore(root / domain).meta.slots == slots:
        return root / domain, root / f"{domain}_align"
    root = Path(cfg.stores_root) / f"mem{slots}"
    store, _, align = build_domain_stores(domain, Path(cfg.world), Path(cfg.experts) / f"{domain}_sft", root,
                                          [f"slots={slots}"], [f"slots={slots}"])
    return store, align


def run_variant(cfg: GagAblationConfig, domain: str, name: str, variant: Variant) -> list[ResultRow]:
    """Train (or reuse) one injector and score it; returns its results rows."""
    from kinject.config import load_config
    from kinject.eval.results import read_results, write_results
    from kinject.gag.config import Stage3Config
    from kinject.gag.evaluate import evaluate_gag
    from kinject.gag.trainer import Stage3Trainer
    from kinject.io import read_jsonl, write_jsonl_atomic
    from kinject.memory.store import MemoryStore
    from kinject.runs import RunRecorder, fresh_or_resume, inputs_hash, is_complete

    world, base = Path(cfg.world), Path(cfg.base)
    mem, amem = memory_dirs(cfg, domain, variant.slots)
    ddir = world / f"{domain}_domain"
    s3 = load_config(shipped(f"configs/gag/{domain}_stage3_tiny.yaml"), [
        f"base={base}", f"out={Path(cfg.out) / domain / name}", f"seed={cfg.seed}",
        f"alignment.data={world / 'general' / 'align.jsonl'}", f"alignment.memory={amem}",
        f"domain.data={ddir / 'qa_train.jsonl'}", f"domain.memory={mem}",
        *cfg.stage3_overrides, *variant.overrides,
    ], expect=Stage3Config)
    run_dir = Path(s3.out)
    h = inputs_hash({"stage3": s3.model_dump(), "splits": cfg.splits}, mem / "manifest.json", amem / "manifest.json",
                    base)
    if is_complete(run_dir, h):
        log.info(f"{domain} {name}: complete, reusing {run_dir}")
        return read_results(run_dir / "eval" / "results.jsonl")
    fresh_or_resume(run_dir, h)
    log.info(f"{domain} {name}: training ({variant.slots} slots, overrides {cfg.stage3_overrides + variant.overrides})")
    rec = RunRecorder(run_dir, "gag ablate", s3, s3.seed)
    trainer = Stage3Trainer(s3)
    with rec.timer("train"):
        rec.metrics.update(trainer.train())
    rows = []
    with rec.timer("eval"):
        for split in cfg.splits:
            dataset = domain if split == "dev" else f"{domain}_{split.removeprefix('dev_')}"
            res = evaluate_gag(trainer.injector.eval(), trainer.base, MemoryStore(mem),
                               read_jsonl(ddir / f"qa_{split}.jsonl"), dataset, split)
            # gag -> the variant's name, gag_zero_memory -> <variant>_zero_memory
            rows += [r.model_copy(update={"method": name + r.method.removeprefix("gag")}) for r in res["results"]]
            rec.metrics[f"{split}/foreign_value_rate"] = res["foreign_value_rate"]
            write_jsonl_atomic(run_dir / "eval" / f"predictions_{split}.jsonl", res["predictions"])
    write_results(run_dir / "eval" / "results.jsonl", rows, append=False)
    rec.metrics.update({f"{r.dataset}/{r.method}/{r.metric}": r.value for r in rows})
    rec.write(inputs_hash=h)
    return rows


def markdown_table(rows: list[ResultRow], metric: str = "em") -> str:
    """Methods as rows, datasets as columns (`metric`, with n)."""
    datasets = list(dict.fromkeys(r.dataset for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    val = {(r.method, r.dataset): r for r in rows if r.metric == metric}
    head = f"| method | {' | '.join(datasets)} |\n|---|{'---|' * len(datasets)}\n"
    lines = []
    for m in methods:
        cells = [f"{val[m, d].value:.3f}" if (m, d) in val else "-" for d in datasets]
        lines.append(f"| {m} | {' | '.join(cells)} |")
    ns = sorted({r.n for r in rows})
    return f"{metric.upper()} (n = {', '.join(map(str, ns))} per dataset)\n\n" + head + "\n".join(lines) + "\n"


def run_ablations(cfg: GagAblationConfig) -> list[ResultRow]:
    from kinject.eval.results import write_results
    from kinject.io import require_dir, write_text_atomic

    # the inputs every run reads, checked before any run starts writing
    require_dir(cfg.world, "world (ablation config key `world`)")
    require_dir(cfg.base, "base model (ablation config key `base`)")
    for domain in cfg.domains:
        require_dir(Path(cfg.memory_root) / domain, f"{domain} memories (ablation config key `memory_root`)")
    rows = []
    for name, variant in cfg.variants.items():  # variant-major: the reference `gag` rows come first
        for domain in cfg.domains:
            rows += run_variant(cfg, domain, name, variant)
    rows.sort(key=lambda r: cfg.domains.index(r.dataset.split("_")[0]) if r.dataset.split("_")[0] in cfg.domains
              else len(cfg.domains))
    out = Path(cfg.out)
    write_results(out / "results.jsonl", rows, append=False)
    write_text_atomic(out / "table.md", markdown_table(rows, "em") + "\n" + markdown_table(rows, "f1"))
    return rows
