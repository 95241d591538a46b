"""`kinject demo`: the README's main job, the whole pipeline on the embedded tiny world.

Each stage is a function registered with `@stage(name, order=N)`, run by increasing order. A
component adds its stage in its own package, in a module named `demo_stages`
(`kinject/<pkg>/demo_stages.py`), discovered at run time: no edit of this file. A stage writes
under `<out>/<name>/` with a manifest and skips itself when that manifest says complete with
the same inputs hash (`kinject.runs.is_complete`), so a re-run with nothing changed is fast.
Stages pass paths to later stages through `ctx.artifacts`.

Orders: foundation 0, world 10, retrieval 30, ppr 40, expert 50, memory 60, gag 70, grip 80,
grip_rl 90, eval 100.

Side lane: a stage marked `lane="side"` needs only the stages before the first side stage
(world, retrieval). The demo runs all side stages in one background process
(`kinject demo --only ...` with the side lane off, log in `<out>/side-lane.log`) while the
main lane (expert -> memory -> gag, one worker per core) trains, so the 2 cores are busy
together. Correctness never depends on it: when the main lane is done the side stages run
in-process as usual, which is a skip when the background run completed them and the real
run (with its error in the foreground) when it did not. `KINJECT_DEMO_SIDE_LANE=0` turns it off.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
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
    lane: str = "main"


STAGES: dict[str, Stage] = {}


def stage(name: str, order: int, help: str = "", lane: str = "main"):
    """Register a demo stage; `lane="side"` for one that needs only world + retrieval (see the
    module doc)."""
    if lane not in ("main", "side"):
        raise ValueError(f"demo stage {name!r}: lane must be 'main' or 'side', not {lane!r}")

    def deco(fn: Callable[[DemoContext, Path], None]):
        doc = help or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        STAGES[name] = Stage(name, fn, doc, order, lane)
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


def side_lane_enabled() -> bool:
    """On when two cores are free for it (the main lane's workers and this background process)."""
    env = os.environ.get("KINJECT_DEMO_SIDE_LANE")
    if env is not None:
        return env not in ("0", "", "false", "no")
    return (os.cpu_count() or 1) > 1 and os.environ.get("KINJECT_DEMO_WORKERS") != "1"


class SideLane:
    """The side stages in one background `kinject demo --only ...` process (see the module doc)."""

    def __init__(self, out: Path, quick: bool, names: list[str]):
        self.names, self.log = names, out / "side-lane.log"
        cmd = [sys.executable, "-m", "kinject.cli", "demo", "--out", str(out), *(["--quick"] if quick else [])]
        for n in names:
            cmd += ["--only", n]
        env = {**os.environ, "KINJECT_DEMO_SIDE_LANE": "0", "KINJECT_DEMO_WORKERS": "1", "OMP_NUM_THREADS": "1"}
        self.t0 = time.perf_counter()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        console.print(f"[cyan]side lane[/cyan]: {', '.join(names)} in a background process (log: {self.log})")

    def wait(self) -> None:
        t = time.perf_counter()
        rc = self.proc.wait()
        done = f"after {time.perf_counter() - self.t0:.1f}s (waited {time.perf_counter() - t:.1f}s)"
        if rc == 0:
            console.print(f"[cyan]side lane[/cyan] finished {done}")
        else:  # the in-process pass re-runs the unfinished stages and shows their error
            console.print(f"[yellow]side lane exited with {rc} {done}; see {self.log}; running its stages here[/yellow]")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


def run_demo(out: Path, quick: bool = False, only: list[str] | None = None) -> DemoContext:
    ctx = DemoContext(out=out, quick=quick)
    out.mkdir(parents=True, exist_ok=True)
    stages = [st for st in discover_stages() if not only or st.name in only]
    side = [st for st in stages if st.lane == "side"]
    lane: SideLane | None = None
    t_all = time.perf_counter()
    try:
        for st in stages:
            if st.lane == "side" and lane is None and side_lane_enabled() and len(stages) > len(side):
                # prerequisites: the main stages already run (world, retrieval), minus the foundation check
                before = [p.name for p in stages if p.order < st.order and p.name != "foundation"]
                lane = SideLane(out, quick, before + [s.name for s in side])
            if st.lane == "side" and lane is not None:
                continue  # deferred: runs in-process (normally a skip) once the main lane is done
            if lane is not None and side and st.order > side[-1].order:
                _finish_side_lane(ctx, lane, side, out)
                side = []
            _run_stage(ctx, st, out)
        if lane is not None and side:
            _finish_side_lane(ctx, lane, side, out)
    finally:
        if lane is not None:
            lane.stop()
    ctx.summary["wall_time_s"] = round(time.perf_counter() - t_all, 1)
    return ctx


def _finish_side_lane(ctx: DemoContext, lane: SideLane, side: list[Stage], out: Path) -> None:
    lane.wait()
    for st in side:
        _run_stage(ctx, st, out)


def _run_stage(ctx: DemoContext, st: Stage, out: Path) -> None:
    console.rule(f"[bold]{st.name}[/bold]: {st.help}")
    t0 = time.perf_counter()
    st.fn(ctx, out / st.name)
    console.print(f"[green]done[/green] {st.name} in {time.perf_counter() - t0:.1f}s")


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
