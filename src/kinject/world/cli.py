"""`kinject world ...`: build a synthetic world, print its stats, pretrain its foundation models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kinject.cliargs import Overrides

world_app = typer.Typer(help="Synthetic private-knowledge world: build, stats, foundation models.",
                        no_args_is_help=True)


@world_app.command("build")
def build_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="world config YAML")] = Path("configs/world/tiny.yaml"),
    out: Annotated[Path, typer.Option("--out", help="output directory")] = Path("outputs/world"),
    force: Annotated[bool, typer.Option("--force", help="rebuild even if unchanged")] = False,
    overrides: Overrides = None,
) -> None:
    """Generate a world (deterministic from the config's seed) into --out."""
    import time

    from kinject.world.build import build_world

    t0 = time.perf_counter()
    build_world(config, out, overrides or [], force=force)
    typer.echo(f"world in {out} ({time.perf_counter() - t0:.1f}s)")


@world_app.command("stats")
def stats_cmd(
    world: Annotated[Path, typer.Argument(help="world directory")],
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Counts per file/domain/split and the separation checks (exit 1 if a check fails)."""
    import json

    from kinject.world.checks import format_stats, world_stats

    stats = world_stats(world)
    typer.echo(json.dumps(stats, indent=2) if json_out else format_stats(stats))
    if not all(c["ok"] for c in stats["checks"].values()):
        raise typer.Exit(1)


@world_app.command("pretrain")
def pretrain_cmd(
    world: Annotated[Path, typer.Option("--world", help="world directory (from world build)")],
    config: Annotated[Path, typer.Option("--config", "-c", help="foundation config YAML")] = Path("configs/world/foundation_tiny.yaml"),
    out: Annotated[Path, typer.Option("--out", help="output directory")] = Path("outputs/foundation"),
    overrides: Overrides = None,
) -> None:
    """Train the world tokenizer, then pretrain the base and the expert init (general corpus only)."""
    from kinject.world.pretrain import pretrain_foundation

    pretrain_foundation(world, config, out, overrides or [])
    typer.echo(f"foundation models in {out}")


@world_app.command("quality")
def quality_cmd(
    foundation: Annotated[Path, typer.Option("--foundation", help="foundation dir (tokenizer, base, expert_init)")],
    world: Annotated[Path, typer.Option("--world", help="world directory")],
    out: Annotated[Path, typer.Option("--out", help="output directory for results.jsonl")] = Path("outputs/foundation_quality"),
    n: Annotated[int, typer.Option("--n", help="questions per test")] = 300,
) -> None:
    """Measure the foundation models' quality bars; writes results.jsonl + bars.json."""
    from kinject.world.quality import measure_quality

    measure_quality(foundation, world, out, n=n)


def register(app: typer.Typer) -> None:
    app.add_typer(world_app, name="world")
