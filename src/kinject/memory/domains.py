"""The private domains' memory stores on a world: per domain, one store of the domain's own
questions (`configs/gag/<domain>_memory_tiny.yaml`) and one of the world's alignment items
(`<domain>_align_memory_tiny.yaml`), written by the domain's expert. Each store is built only
when not complete with the same inputs; a store started from other inputs is rebuilt, never
mixed (`kinject.runs.fresh_or_resume`)."""

from __future__ import annotations

from pathlib import Path

from kinject.resources import shipped


def build_store(config_file: Path, overrides: list[str], files: list[Path]) -> tuple[Path, dict | None]:
    """Build one store unless complete with the same inputs; returns (dir, stats or None if skipped)."""
    from kinject.config import load_config
    from kinject.memory.build import build_memory
    from kinject.memory.config import MemoryBuildConfig
    from kinject.memory.store import MemoryStore
    from kinject.runs import RunRecorder, fresh_or_resume, inputs_hash, is_complete

    cfg = load_config(config_file, overrides, expect=MemoryBuildConfig)
    out = Path(cfg.out)
    h = inputs_hash(cfg, *files)
    if is_complete(out, h):
        return out, None
    fresh_or_resume(out, h)
    rec = RunRecorder(out, "demo memory", cfg, cfg.seed)
    with rec.timer("build"):
        stats = build_memory(cfg)
    rec.metrics.update(stats)
    rec.metrics.update(MemoryStore(out).stats())
    rec.write(inputs_hash=h)
    return out, stats


def build_domain_stores(domain: str, world: Path, expert: Path, out: Path, domain_overrides: list[str],
                        align_overrides: list[str]) -> tuple:
    """One domain's two stores under `out` (`<domain>` and `<domain>_align`), with the config
    overrides given (a worker of `run_parallel` in the demo): (domain store, stats, align store)."""
    ddir = world / f"{domain}_domain"
    qfiles = [ddir / f"qa_{s}.jsonl" for s in ("train", "dev", "dev_para")]
    store, stats = build_store(
        shipped(f"configs/gag/{domain}_memory_tiny.yaml"),
        [f"expert={expert}", f"out={out / domain}", f"questions=[{', '.join(map(str, qfiles))}]",
         *domain_overrides],
        [expert, *qfiles])
    align = [f for f in (world / "general" / "align_dev.jsonl", world / "general" / "align.jsonl") if f.is_file()]
    align_store, _ = build_store(
        shipped(f"configs/gag/{domain}_align_memory_tiny.yaml"),
        [f"expert={expert}", f"out={out / f'{domain}_align'}", f"questions=[{', '.join(map(str, align))}]",
         *align_overrides],
        [expert, *align])
    return store, stats, align_store
