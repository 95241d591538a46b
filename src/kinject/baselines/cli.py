"""`kinject baselines lora --config configs/baselines/<domain>_lora_tiny.yaml`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kinject.cliargs import Overrides

baselines_app = typer.Typer(help="Baselines that need training (the LoRA parametric baseline).", no_args_is_help=True)


@baselines_app.command("lora")
def lora(
    config: Annotated[Path, typer.Option("--config", "-c", help="a `kind: baseline_lora` YAML")],
    overrides: Overrides = None,
    force: Annotated[bool, typer.Option(help="retrain even when complete with the same inputs")] = False,
) -> None:
    """LoRA fine-tune of the base on a domain's QA train split (loss on the answer only)."""
    from kinject.baselines.config import LoraBaselineConfig
    from kinject.baselines.lora import run_lora
    from kinject.config import load_config

    cfg = load_config(config, overrides or [], expect=LoraBaselineConfig)
    out = run_lora(cfg, force=force)
    typer.echo(f"adapter: {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(baselines_app, name="baselines")
