"""`kinject bench methods|stages|arch|levers --out DIR [--config f.yaml] [key=value ...]`:
each writes DIR/bench.json and DIR/summary.md (docs/performance.md has the measured numbers)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kinject.benchcli import bench_app
from kinject.cliargs import Overrides

OutOpt = Annotated[Path, typer.Option("--out", help="output directory (bench.json, summary.md)")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (configs/bench/*.yaml)")]


def _cfg(config, overrides, cls):
    from kinject.config import load_config

    return load_config(config, overrides or [], expect=cls)


def _done(out: Path) -> None:
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"wrote {out}/bench.json")


@bench_app.command("methods")
def bench_methods(out: OutOpt, config: ConfigOpt = None, overrides: Overrides = None) -> None:
    """Per method: prompt/expert tokens, prefill vs decode, latency p50/p90, batched throughput."""
    from kinject.bench.config import MethodsBenchConfig
    from kinject.bench.methods import run_methods

    run_methods(_cfg(config, overrides, MethodsBenchConfig), out)
    _done(out)


@bench_app.command("levers")
def bench_levers(out: OutOpt, config: ConfigOpt = None, overrides: Overrides = None) -> None:
    """Speed levers, before/after: memory cache, background cap (with GAG EM), batching, static cache + compile."""
    from kinject.bench.config import LeversBenchConfig
    from kinject.bench.levers import run_levers

    run_levers(_cfg(config, overrides, LeversBenchConfig), out)
    _done(out)


@bench_app.command("arch")
def bench_arch(out: OutOpt, config: ConfigOpt = None, overrides: Overrides = None) -> None:
    """Real-size shapes, random weights: reduced depth on CPU (scaled per layer), full size on CUDA."""
    from kinject.bench.arch import run_arch
    from kinject.bench.config import ArchBenchConfig

    run_arch(_cfg(config, overrides, ArchBenchConfig), out)
    _done(out)


@bench_app.command("stages")
def bench_stages(out: OutOpt, config: ConfigOpt = None, overrides: Overrides = None) -> None:
    """Training tokens/s (DAPT, SFT, Stage III, GRIP SFT), memory build, routing and retrieval rates."""
    from kinject.bench.config import StagesBenchConfig
    from kinject.bench.stages import run_stages

    run_stages(_cfg(config, overrides, StagesBenchConfig), out)
    _done(out)


def register(app: typer.Typer) -> None:
    """The commands sit on the shared `kinject bench` group (kinject.benchcli)."""
