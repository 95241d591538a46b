"""`kinject gag train|answer`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

gag_app = typer.Typer(help="GAG injection: Stage III injector training and injected answering.", no_args_is_help=True)
Overrides = Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides", show_default=False)]


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


@gag_app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="gag_stage3 YAML")],
    overrides: Overrides = None,
) -> None:
    """Stage III: train the injector (alignment phase, then domain phase) through the frozen base."""
    from kinject.config import load_config
    from kinject.gag.config import Stage3Config
    from kinject.gag.trainer import Stage3Trainer
    from kinject.runs import RunRecorder

    cfg = load_config(config, overrides or [], expect=Stage3Config)
    rec = RunRecorder(cfg.out, "gag train", cfg, cfg.seed)
    trainer = Stage3Trainer(cfg, say=_say)
    with rec.timer("train"):
        metrics = trainer.train()
    if trainer.accelerator.is_main_process:
        rec.metrics.update(metrics)
        rec.write()
        typer.echo(f"injector ({metrics['injector_parameters']:,} parameters) saved to {Path(cfg.out) / 'injector'}; "
                   f"loss curves in {Path(cfg.out) / 'loss_curves.png'}")


@gag_app.command("answer")
def answer_cmd(
    questions: Annotated[list[str], typer.Argument(help="question(s) to answer")],
    config: Annotated[Path, typer.Option("--config", "-c", help="gag_answer YAML")],
    override: Annotated[list[str] | None, typer.Option("--set", help="key.sub=value override")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON lines")] = False,
) -> None:
    """Answer with online memories: the expert writes a background, the injector carries it to the base."""
    import json

    from kinject.config import load_config
    from kinject.gag.config import GagAnswerConfig
    from kinject.gag.pipeline import GagPipeline

    cfg = load_config(config, override or [], expect=GagAnswerConfig)
    pipe = GagPipeline(cfg.expert, cfg.base, cfg.injector, cfg.system, cfg.instruction, cfg.max_background_tokens,
                       cfg.device, cfg.dtype, cfg.batch_size, say=_say)
    for a in pipe.answer(questions, max_new_tokens=cfg.max_new_tokens):
        if json_out:
            typer.echo(json.dumps(a.__dict__, ensure_ascii=False))
        else:
            typer.echo(f"Q: {a.question}\nA: {a.answer}\n(background, {a.background_tokens} tokens: {a.background})")


def register(app: typer.Typer) -> None:
    app.add_typer(gag_app, name="gag")
