"""`kinject memory build|inspect|merge`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kinject.cliargs import Overrides

memory_app = typer.Typer(help="GAG memories: expert backgrounds -> multi-layer slots -> store.", no_args_is_help=True)


@memory_app.command("build")
def build_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="memory_build YAML")],
    overrides: Overrides = None,
) -> None:
    """Generate backgrounds with the expert, compress to slots, store (resumable, torchrun-shardable)."""
    from kinject.config import load_config
    from kinject.distributed import rank_and_world
    from kinject.memory.build import build_memory
    from kinject.memory.config import MemoryBuildConfig
    from kinject.memory.store import MemoryStore
    from kinject.runs import RunRecorder

    cfg = load_config(config, overrides or [], expect=MemoryBuildConfig)
    rec = RunRecorder(cfg.out, "memory build", cfg, cfg.seed)
    with rec.timer("build"):
        stats = build_memory(cfg)
    if rank_and_world()[0] == 0:
        store = MemoryStore(cfg.out)
        rec.metrics.update(stats)
        rec.metrics.update(store.stats())
        rec.write()
        typer.echo(f"memory store {cfg.out}: {len(store)} memories ({stats['samples']} new, "
                   f"{stats['skipped']} already stored); {stats['samples_per_s']} samples/s, "
                   f"{stats['tokens_per_s']} generated tokens/s")


@memory_app.command("inspect")
def inspect_cmd(
    store_dir: Annotated[Path, typer.Argument(help="memory store directory")],
    verify: Annotated[bool, typer.Option(help="check every shard's sha256")] = True,
) -> None:
    """Counts, shapes, dtype, bytes per sample (vs full trajectories), token-count histogram."""
    from kinject.memory.store import MemoryStore

    store = MemoryStore(store_dir)
    if verify:
        store.verify()
    st = store.stats()
    for k, v in st.items():
        typer.echo(f"{k}: {v}")
    typer.echo("generated tokens per sample:")
    top = max([c for _, _, c in store.token_histogram()] + [1])
    for lo, hi, c in store.token_histogram():
        typer.echo(f"  {lo:>5}-{hi:<5} {c:>6} {'#' * round(40 * c / top)}")


@memory_app.command("merge")
def merge_cmd(
    out: Annotated[Path, typer.Option("--out", help="target store (created or appended to)")],
    parts: Annotated[list[Path], typer.Argument(help="part stores to append")],
) -> None:
    """Append part stores (e.g. one per rank) into one store."""
    from kinject.memory.store import merge_stores

    store = merge_stores(out, parts)
    typer.echo(f"memory store {out}: {len(store)} memories")


@memory_app.command("bench")
def bench_cmd(
    out: Annotated[Path, typer.Option("--out", help="output directory (bench.json)")] = Path("outputs/bench/memory"),
    expert: Annotated[str | None, typer.Option(help="expert dir (default: a fresh tiny random one)")] = None,
    n: Annotated[int, typer.Option(help="questions")] = 64,
    max_new_tokens: Annotated[int, typer.Option(help="background length cap")] = 64,
    batch_size: Annotated[int, typer.Option(help="generation batch size")] = 16,
    dtype: Annotated[str, typer.Option(help="store dtype")] = "float16",
    threads: Annotated[int, typer.Option(help="torch threads (0: leave as is)")] = 1,
    source: Annotated[str, typer.Option(help="generate (backgrounds) or prefill (memories without decoding)")] = "generate",
    answer_prefix: Annotated[str, typer.Option(help="prefill: text read after the question")] = "",
) -> None:
    """Measure memory construction: samples/s, tokens/s, bytes/sample vs full trajectories."""
    from kinject.errors import UserError
    from kinject.memory.bench import print_result, run_bench

    if source not in ("generate", "prefill"):
        raise UserError(f"--source must be generate or prefill, not {source!r}")
    typer.echo(print_result(run_bench(out, expert, n, max_new_tokens, batch_size, dtype=dtype, threads=threads,
                                      source=source, answer_prefix=answer_prefix)))


def register(app: typer.Typer) -> None:
    app.add_typer(memory_app, name="memory")
