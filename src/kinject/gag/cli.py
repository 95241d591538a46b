"""`kinject gag train|answer|eval|ablate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kinject.cliargs import Overrides

gag_app = typer.Typer(help="GAG injection: Stage III injector training and injected answering.", no_args_is_help=True)


@gag_app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="gag_stage3 YAML")],
    overrides: Overrides = None,
) -> None:
    """Stage III: train the injector (alignment phase, then domain phase) through the frozen base."""
    from kinject.config import load_config
    from kinject.distributed import end_distributed
    from kinject.gag.config import Stage3Config
    from kinject.gag.trainer import Stage3Trainer
    from kinject.runs import RunRecorder

    cfg = load_config(config, overrides or [], expect=Stage3Config)
    rec = RunRecorder(cfg.out, "gag train", cfg, cfg.seed)
    trainer = Stage3Trainer(cfg)
    with rec.timer("train"):
        metrics = trainer.train()
    if trainer.accelerator.is_main_process:
        rec.metrics.update(metrics)
        rec.write()
        typer.echo(f"injector ({metrics['injector_parameters']:,} parameters) saved to {Path(cfg.out) / 'injector'}; "
                   f"loss curves in {Path(cfg.out) / 'loss_curves.png'}")
    end_distributed()


@gag_app.command("answer")
def answer_cmd(
    args: Annotated[list[str], typer.Argument(help="question(s) to answer, and key.sub=value config overrides",
                                              show_default=False)],
    config: Annotated[Path, typer.Option("--config", "-c", help="gag_answer YAML")],
    override: Annotated[list[str] | None, typer.Option("--set", hidden=True)] = None,  # older spelling
    json_out: Annotated[bool, typer.Option("--json", help="print JSON lines")] = False,
) -> None:
    """Answer with online memories: the expert writes a background, the injector carries it to the base."""
    import json

    from kinject.cliargs import split_overrides
    from kinject.config import load_config
    from kinject.errors import UserError
    from kinject.gag.config import GagAnswerConfig
    from kinject.gag.pipeline import GagPipeline

    questions, overrides = split_overrides(args)
    if not questions:
        raise UserError("gag answer: give at least one question")
    cfg = load_config(config, [*(override or []), *overrides], expect=GagAnswerConfig)
    pipe = GagPipeline.from_pretrained(cfg.expert, cfg.base, cfg.injector, cfg.system, cfg.instruction, cfg.max_background_tokens,
                       cfg.device, cfg.dtype, cfg.batch_size, memory=cfg.memory)
    for a in pipe.answer(questions, max_new_tokens=cfg.max_new_tokens):
        if json_out:
            typer.echo(json.dumps(a.__dict__, ensure_ascii=False))
        else:
            typer.echo(f"Q: {a.question}\nA: {a.answer}\n(background, {a.background_tokens} tokens: {a.background})")


@gag_app.command("eval")
def eval_cmd(
    injector: Annotated[Path, typer.Option(help="trained injector directory")],
    base: Annotated[Path, typer.Option(help="base model directory")],
    memory: Annotated[Path, typer.Option(help="memory store holding the evaluated questions")],
    data: Annotated[Path, typer.Option(help="JSONL questions (question/input + answer/output)")],
    out: Annotated[Path, typer.Option("--out", help="output directory (results.jsonl)")],
    dataset: Annotated[str, typer.Option(help="dataset name in results (e.g. materials)")] = "materials",
    split: Annotated[str, typer.Option(help="split name in results (e.g. dev)")] = "dev",
    controls: Annotated[bool, typer.Option(help="also zeroed and foreign memories")] = True,
    max_new_tokens: Annotated[int, typer.Option(help="answer length cap")] = 32,
    batch_size: Annotated[int, typer.Option(help="batch size")] = 32,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda")] = "auto",
) -> None:
    """Score GAG with precomputed memories (EM, F1, has_answer) and the slot controls."""
    from kinject.eval.results import print_results, write_results
    from kinject.gag.base import InjectedBase
    from kinject.gag.evaluate import evaluate_gag
    from kinject.gag.injector import Injector
    from kinject.io import read_jsonl, write_jsonl_atomic
    from kinject.memory.store import MemoryStore
    from kinject.runs import RunRecorder

    inj = Injector.load(injector)
    store = MemoryStore(memory)
    inj.check_store(store.meta, f"memory store {memory}")
    ib = InjectedBase.load(base, inj.config.slots, device, "auto")
    inj.check_base(ib.identity(), f"base {base}")
    inj.to(ib.device).eval()
    rec = RunRecorder(out, "gag eval", {"injector": str(injector), "base": str(base), "memory": str(memory),
                                        "data": str(data), "dataset": dataset, "split": split})
    with rec.timer("eval"):
        res = evaluate_gag(inj, ib, store, read_jsonl(data), dataset, split, controls, batch_size, max_new_tokens)
    write_results(out / "results.jsonl", res["results"], append=False)
    write_jsonl_atomic(out / "predictions.jsonl", res["predictions"])
    rec.metrics = {f"{r.method}/{r.metric}": r.value for r in res["results"]}
    rec.metrics["foreign_value_rate"] = res["foreign_value_rate"]
    rec.write()
    print_results(res["results"])
    if res["foreign_value_rate"] is not None:
        typer.echo(f"foreign memories: answer = the other question's value in {res['foreign_value_rate']:.2%}")


@gag_app.command("ablate")
def ablate_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="gag_ablation YAML")],
    overrides: Overrides = None,
) -> None:
    """Ablations of the losses and the number of slots: one injector per (domain, variant), scored on dev."""
    from kinject.config import load_config
    from kinject.gag.ablations import GagAblationConfig, run_ablations

    cfg = load_config(config, overrides or [], expect=GagAblationConfig)
    run_ablations(cfg)
    typer.echo((Path(cfg.out) / "table.md").read_text())
    typer.echo(f"results in {Path(cfg.out) / 'results.jsonl'}")


def register(app: typer.Typer) -> None:
    app.add_typer(gag_app, name="gag")
