"""`kinject grip rl`: registered by the grip group's CLI through `register(app)`."""

from __future__ import annotations

from pathlib import Path

import typer


def rl_command(
    config: Path = typer.Option(..., "--config", "-c", help="a grip_rl YAML (configs/grip/rl_tiny.yaml)"),
    out: Path = typer.Option(Path("outputs/grip_rl"), "--out", "-o", help="output directory (resumable)"),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides"),
    force: bool = typer.Option(False, help="run even if the manifest says complete"),
) -> None:
    """DAPO on the GRIP SFT checkpoint with retrieval in the loop; writes curves and results.jsonl."""
    from rich.console import Console

    from kinject.config import load_config
    from kinject.eval.results import print_results, read_results
    from kinject.grip.rl_config import GripRLConfig
    from kinject.grip.rl_train import run_grip_rl

    cfg = load_config(config, overrides or [], expect=GripRLConfig)
    res = run_grip_rl(cfg, out, force=force)
    console = Console()
    if res["skipped"]:
        console.print(f"complete already (same inputs): {out}")
        return
    m = res["metrics"]
    console.print(f"{m['steps']} steps, {m['wall_s_per_step']} s/step, groups filtered "
                  f"{m['share_groups_filtered']:.2f}, retrievals/episode {m['retrievals_per_episode']:.2f} -> {out}")
    if m["results"]:
        print_results(read_results(out))


def register(app: typer.Typer) -> None:
    """Add `rl` to a Typer app (the `grip` group calls this)."""
    app.command("rl")(rl_command)
