"""`kinject grip synth | sft | answer | eval | bench`. Thin: load the config, call the module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kinject.cliargs import Overrides

grip_app = typer.Typer(help="GRIP: self-triggered retrieval as generation (the GRIP paper).", no_args_is_help=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config")]


@grip_app.command("synth")
def synth_cmd(config: ConfigOpt,
              out: Annotated[Path | None, typer.Option("--out", help="output directory (default: config's out)")] = None,
              overrides: Overrides = None) -> None:
    """Pattern A-D turns: closed-book pass, retrieval, rewriter; writes sft.jsonl / rl.jsonl."""
    from kinject.config import load_config
    from kinject.grip.config import GripSynthConfig
    from kinject.grip.synth import synthesize

    cfg = load_config(config, overrides or [], expect=GripSynthConfig)
    m = synthesize(cfg, out)
    typer.echo(json.dumps({k: m[k] for k in ("questions", "classes", "notes", "stats", "closed_book_em")}, indent=2))


@grip_app.command("sft")
def sft_cmd(config: ConfigOpt,
            out: Annotated[Path | None, typer.Option("--out", help="output model directory")] = None,
            overrides: Overrides = None) -> None:
    """Fine-tune on synthesized turns (loss on the target turn only)."""
    from kinject.config import load_config
    from kinject.grip.config import GripSftConfig
    from kinject.grip.sft import train_sft

    cfg = load_config(config, overrides or [], expect=GripSftConfig)
    typer.echo(f"model written to {train_sft(cfg, out)}")


@grip_app.command("answer")
def answer_cmd(config: ConfigOpt,
               args: Annotated[list[str], typer.Argument(help="the question, and key.sub=value config overrides",
                                                         show_default=False)],
               set_: Annotated[list[str] | None, typer.Option("--set", hidden=True)] = None,  # older spelling
               ) -> None:
    """Answer one question with the agent; prints every step as JSON."""
    from kinject.cliargs import split_overrides
    from kinject.config import load_config
    from kinject.errors import UserError
    from kinject.grip.config import GripEvalConfig
    from kinject.grip.evaluate import load_agent
    from kinject.retrieval.base import open_index

    texts, overrides = split_overrides(args)
    if len(texts) > 1:
        raise UserError(f"grip answer: one question at a time, got {len(texts)} (quote the question)")
    question = texts[0] if texts else ""
    if not question.strip():
        raise UserError("grip answer: the question is empty")
    cfg = load_config(config, [*(set_ or []), *overrides], expect=GripEvalConfig)
    with open_index(cfg.index, cfg.backend) as retriever:
        agent, _, _ = load_agent(cfg, retriever)
        ep = agent.run([question.strip()])[0]
    typer.echo(json.dumps(ep.to_json(), indent=2, ensure_ascii=False))


@grip_app.command("eval")
def eval_cmd(config: ConfigOpt,
             out: Annotated[Path, typer.Option("--out", help="output directory")],
             data: Annotated[Path | None, typer.Option("--data", help="questions JSONL {question, answer}")] = None,
             overrides: Overrides = None) -> None:
    """Evaluate the agent (and, with base_model, the closed-book base and RAG); writes results.jsonl."""
    from kinject.config import load_config
    from kinject.eval.results import print_results
    from kinject.grip.config import GripEvalConfig
    from kinject.grip.evaluate import grip_eval

    cfg = load_config(config, overrides or [], expect=GripEvalConfig)
    print_results(grip_eval(cfg, data, out), title=f"grip eval -> {out}")


@grip_app.command("bench")
def bench_cmd(config: ConfigOpt,
              out: Annotated[Path, typer.Option("--out", help="output directory (bench.json)")],
              data: Annotated[Path | None, typer.Option("--data", help="questions JSONL")] = None,
              n: Annotated[int, typer.Option("--n", help="number of questions")] = 64,
              overrides: Overrides = None) -> None:
    """Agent throughput: questions/s batched vs one at a time (writes bench.json)."""
    from kinject.config import load_config
    from kinject.grip.config import GripEvalConfig
    from kinject.grip.evaluate import grip_bench

    cfg = load_config(config, overrides or [], expect=GripEvalConfig)
    typer.echo(json.dumps(grip_bench(cfg, data, out, n), indent=2))


def register(app: typer.Typer) -> None:
    from kinject.grip import rl_cli

    rl_cli.register(grip_app)  # `kinject grip rl` lives in rl_cli.py
    app.add_typer(grip_app, name="grip")
