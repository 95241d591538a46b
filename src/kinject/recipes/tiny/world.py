"""Demo stage `world` (order 10): build the tiny world; point later stages at the shipped
foundation models (tokenizer, base, expert init) under assets/foundation/tiny."""

from __future__ import annotations

from pathlib import Path

from kinject.recipes.engine import DemoContext, stage
from kinject.resources import shipped

FOUNDATION = shipped("assets/foundation/tiny")


@stage("world", order=10, help="synthetic private-knowledge world (tiny) + shipped foundation models")
def world_stage(ctx: DemoContext, out: Path) -> None:
    from kinject.world.build import build_world, tiny_world_config
    from kinject.world.checks import run_checks

    world = build_world(tiny_world_config(), out / "world")  # skips itself when unchanged
    checks = run_checks(world)
    failed = [k for k, c in checks.items() if not c["ok"]]
    if failed:
        raise RuntimeError(f"world checks failed: {failed}")
    if not (FOUNDATION / "base" / "config.json").is_file():
        raise RuntimeError(f"shipped foundation models missing under {FOUNDATION} "
                           "(re-create them with `kinject world pretrain`)")
    ctx.artifacts["world"] = world
    ctx.artifacts["foundation"] = FOUNDATION
    ctx.summary["world: separation/split checks passed"] = len(checks)
