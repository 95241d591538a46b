"""`kinject demo`: the README's main job, the whole pipeline on the embedded tiny world.

Each stage is a function registered with `@stage(name, order=N)`, run by increasing order. A
component adds its stage in its own package, in a module named `demo_stages`
(`kinject/<pkg>/demo_stages.py`), discovered at run time: no edit of this file. A stage writes
under `<out>/<name>/` with a manifest and skips itself when that manifest says complete with
the same inputs hash (`kinject.runs.is_complete`), so a re-run with nothing changed is fast.
Stages pass paths to later stages through `ctx.artifacts`.

Orders: foundation 0, world 10, retrieval 30, ppr 40, expert 50, memory 60, gag 70, grip 80,
grip_rl 90, eval 100.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


@dataclass
class DemoContext:
    out: Path
    quick: bool
    artifacts: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, object] = field(default_factory=dict)


@dataclass
class Stage:
    name: str
    fn: Callable[[DemoContext, Path], None]
    help: str
    order: int


STAGES: dict[str, Stage] = {}


def stage(name: str, order: int, help: str = ""):
    def deco(fn: Callable[[DemoContext, Path], None]):
        doc = help or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        STAGES[name] = Stage(name, fn, doc, order)
        return fn

    return deco


def discover_stages() -> list[Stage]:
    import kinject

    for mod in pkgutil.iter_modules(kinject.__path__):
        name = f"kinject.{mod.name}.demo_stages"
        if mod.ispkg and importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
    return sorted(STAGES.values(), key=lambda s: s.order)


def demo_workers(n_jobs: int) -> int:
    """Processes for independent per-domain work: one per core (tiny trainings run fastest with
    one torch thread each), at most `n_jobs`; `KINJECT_DEMO_WORKERS` overrides (1 = in-process)."""
    env = os.environ.get("KINJECT_DEMO_WORKERS")
    cap = int(env) if env and env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)
    return max(1, min(n_jobs, cap))


def _one_thread_worker() -> None:
    # runs before the worker unpickles its job, so torch (imported by the job) starts with 1 thread
    os.environ["OMP_NUM_THREADS"] = "1"


def run_parallel(fn: Callable, jobs: list[tuple]) -> list:
    """`[fn(*job) for job in jobs]`, in worker processes when more than one core is free.

    `fn` must be a module-level function (it is pickled to a spawned process). Results keep the
    order of `jobs`; the first worker error is raised here, after the others finished."""
    workers = demo_workers(len(jobs))
    if workers == 1:
        return [fn(*job) for job in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_one_thread_worker) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        errors = [f.exception() for f in futures]
    for e in errors:
        if e is not None:
            raise e
    return [f.result() for f in futures]


@stage("foundation", order=0, help="tiny random model: save, reload, identical logits")
def foundation_check(ctx: DemoContext, out: Path) -> None:
    import torch

    from kinject.models import TinySpec, load_causal_lm, make_tiny_model, save_model
    from kinject.runs import RunRecorder
    from kinject.tokenizer import BUILTIN_SAMPLE, train_tokenizer

    rec = RunRecorder(out, "demo foundation", seed=0)
    tok = train_tokenizer(BUILTIN_SAMPLE * 4, vocab_size=600, min_frequency=1)
    model = make_tiny_model(TinySpec(vocab=600, hidden=64, layers=2, heads=4), tokenizer=tok)
    save_model(model, tok, out / "tiny-model")
    loaded, tok2 = load_causal_lm(out / "tiny-model", device="cpu")
    ids = tok2("Question: What is the capital of Norland?", return_tensors="pt").input_ids
    with torch.no_grad():
        same = torch.equal(model.eval()(ids).logits, loaded(ids).logits)
    rec.metrics["reload_logits_identical"] = same
    rec.write()
    ctx.summary["foundation: reload logits identical"] = same
    if not same:
        raise RuntimeError("saved-then-loaded tiny model gives different logits")


def run_demo(out: Path, quick: bool = False, only: list[str] | None = None) -> DemoContext:
    ctx = DemoContext(out=out, quick=quick)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    for st in discover_stages():
        if only and st.name not in only:
            continue
        console.rule(f"[bold]{st.name}[/bold]: {st.help}")
        t0 = time.perf_counter()
        st.fn(ctx, out / st.name)
        console.print(f"[green]done[/green] {st.name} in {time.perf_counter() - t0:.1f}s")
    ctx.summary["wall_time_s"] = round(time.perf_counter() - t_all, 1)
    return ctx


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Annotated[Path, typer.Option("--out", help="output root")] = Path("outputs/demo"),
        quick: Annotated[bool, typer.Option("--quick", help="smaller preset")] = False,
        only: Annotated[list[str] | None, typer.Option("--only", help="run only these stages")] = None,
    ) -> None:
        """Run the whole pipeline on the embedded tiny world (the README's main job)."""
        ctx = run_demo(out, quick=quick, only=only)
        for k, v in ctx.summary.items():
            typer.echo(f"{k}: {v}")
        typer.echo(f"outputs under {out}")
