"""`kinject expert dapt | sft | ask | eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kinject.cliargs import Overrides

expert_app = typer.Typer(help="GAG expert: Stage I DAPT, Stage II QA-SFT, ask, evaluate.", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (else overrides only)")]
Force = Annotated[bool, typer.Option("--force", help="retrain even if the output is up to date")]


def _threads() -> None:
    import os

    import torch

    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@expert_app.command("dapt")
def dapt(config: ConfigOpt = None, overrides: Overrides = None, force: Force = False) -> None:
    """Stage I: continued pretraining on the domain corpus (packed blocks, best by val loss)."""
    from kinject.config import load_config
    from kinject.expert.config import DaptConfig
    from kinject.expert.dapt import run_dapt

    _threads()
    cfg = load_config(config, overrides or [], expect=DaptConfig)
    out = run_dapt(cfg, force=force)
    typer.echo(f"expert DAPT model: {out}")


@expert_app.command("sft")
def sft(config: ConfigOpt = None, overrides: Overrides = None, force: Force = False) -> None:
    """Stage II: QA-SFT, loss on the assistant turn only."""
    from kinject.config import load_config
    from kinject.expert.config import SftConfig
    from kinject.expert.sft import run_sft

    _threads()
    cfg = load_config(config, overrides or [], expect=SftConfig)
    out = run_sft(cfg, force=force)
    typer.echo(f"expert SFT model: {out}")


@expert_app.command("ask")
def ask(
    question: Annotated[str, typer.Argument(help="the question")],
    model: Annotated[Path, typer.Option("--model", help="expert model directory")],
    instruction: Annotated[str | None, typer.Option(help="default: the one the expert was trained with")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="answer length limit")] = 64,
) -> None:
    """Print the expert's greedy answer to one question."""
    from kinject.expert.evaluate import answer, default_instruction
    from kinject.models import load_causal_lm

    m, tok = load_causal_lm(model)
    ins = instruction if instruction is not None else default_instruction(model)
    typer.echo(answer(m, tok, [(ins, question)], max_new_tokens=max_new_tokens)[0])


@expert_app.command("eval")
def evaluate(
    model: Annotated[Path, typer.Option("--model", help="expert model directory")],
    data: Annotated[list[str], typer.Option("--data", help="SPLIT=FILE.jsonl (repeatable)")],
    out: Annotated[Path, typer.Option("--out", help="output directory (results.jsonl)")],
    method: Annotated[str, typer.Option(help="method name in results.jsonl")] = "expert",
    limit: Annotated[int | None, typer.Option(help="first N questions per file")] = None,
) -> None:
    """EM, F1 and has_answer of the expert's greedy answers on QA files."""
    from kinject.errors import UserError
    from kinject.eval.results import print_results
    from kinject.expert.evaluate import evaluate_files

    files = {}
    for item in data:
        if "=" not in item:
            raise UserError(f"--data {item!r} must look like SPLIT=FILE.jsonl (e.g. dev=qa_dev.jsonl)")
        split, path = item.split("=", 1)
        files[split] = path
    _threads()
    print_results(evaluate_files(model, files, out, method=method, limit=limit), title=f"expert eval -> {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(expert_app, name="expert")
