"""`kinject demo`: the engine that runs a recipe's stages (the tiny recipe by default, the whole
pipeline on the embedded tiny world; `--preset smollm2` for the real-model recipe).

Each stage is a function registered with `@stage(name, order=N)`, run by increasing order. The
tiny recipe's stages are the modules `kinject.recipes.tiny` imports, in its stage list; any other
module imported before the demo runs may register one more with `@stage`. A stage writes under
`<out>/<name>/` with a manifest and skips itself when that manifest says complete with the same
inputs hash (`kinject.runs.is_complete`), so a re-run with nothing changed is fast. Stages pass
paths to later stages through `ctx.artifacts`.

Side lane: a stage marked `lane="side"` needs only the stages before the first side stage
(world, retrieval). The demo runs all side stages in one background process
(`kinject demo --only ...` with the side lane off, log in `<out>/side-lane.log`) while the
main lane (expert -> memory -> gag) trains. Correctness never depends on it: when the main lane
is done the side stages run in-process as usual, which is a skip when the background run
completed them and the real run (with its error in the foreground) when it did not.
`KINJECT_DEMO_SIDE_LANE=0` turns it off.

Cores: never more busy processes than cores. The side lane is one busy process; while it runs,
`run_parallel` starts per-domain jobs only on the remaining cores, and the next job starts the
moment a core frees (a job ending, or the side lane ending). See `job_slots` for why.

Timings: every stage's wall and CPU seconds (its own process, its worker processes, and the
side lane's stages, which its process records itself) go to `<out>/timings.json`
(`StageTimings`), merged across resumed runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
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


def registered_stages() -> list[Stage]:
    """The tiny recipe's stages and any other registered with `@stage`, by order."""
    import kinject.recipes.tiny  # noqa: F401 - importing the recipe registers its stages

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
    from kinject.log import setup_logging

    setup_logging()  # a spawned worker starts without the parent's log handler


def job_slots(workers: int, cores: int, side_lane_busy: bool) -> int:
    """How many per-domain jobs may run now: one per core not held by the side lane, at least 1.

    Why the jobs shrink rather than the side lane wait, on 2 cores with two domain jobs of E
    seconds each (the expert stage) and S seconds of single-core side-lane work: waiting puts S
    after the main lane with one core idle, E + S in all. Shrinking runs the side lane on one core
    from the start and the jobs one after the other on the other, the second job taking whichever
    core frees first: max(2E, S) when S >= E, S + E when S < E, so never longer than waiting and
    shorter whenever the side lane outlasts one job (it does on the tiny preset). Later stages
    (memory, GAG) then have both cores. Oversubscribing instead (both jobs and the side lane on 2
    cores) makes every process slower than its share."""
    return max(1, min(workers, cores - (1 if side_lane_busy else 0)))


_side_lane: SideLane | None = None  # the running side lane of this process's demo, if any


def side_lane_busy() -> bool:
    return _side_lane is not None and _side_lane.running()


# how often a waiting run_parallel looks whether the side lane has freed its core
POLL_S = 2.0


def run_parallel(fn: Callable, jobs: list[tuple]) -> list:
    """`[fn(*job) for job in jobs]`, in worker processes when more than one core is free.

    `fn` must be a module-level function (it is pickled to a spawned process). Results keep the
    order of `jobs`; the first worker error is raised here, after the others finished. At most
    `job_slots` jobs run at once: a core held by the side lane takes no job until it frees."""
    workers = demo_workers(len(jobs))
    if workers == 1:
        return [fn(*job) for job in jobs]
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    cores = os.cpu_count() or 1
    results: list = [None] * len(jobs)
    errors: list = [None] * len(jobs)
    pending = list(enumerate(jobs))
    running: dict = {}
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_one_thread_worker) as pool:
        while pending or running:
            while pending and len(running) < job_slots(workers, cores, side_lane_busy()):
                i, job = pending.pop(0)
                running[pool.submit(fn, *job)] = i
            done, _ = wait(running, timeout=POLL_S if pending else None, return_when=FIRST_COMPLETED)
            for f in done:
                i = running.pop(f)
                errors[i] = f.exception()
                if errors[i] is None:
                    results[i] = f.result()
    for e in errors:
        if e is not None:
            raise e
    return results


def side_lane_enabled() -> bool:
    """On when two cores are free for it (the main lane's workers and this background process)."""
    env = os.environ.get("KINJECT_DEMO_SIDE_LANE")
    if env is not None:
        return env not in ("0", "", "false", "no")
    return (os.cpu_count() or 1) > 1 and os.environ.get("KINJECT_DEMO_WORKERS") != "1"


class SideLane:
    """The side stages in one background `kinject demo --only ...` process (see the module doc)."""

    def __init__(self, out: Path, quick: bool, names: list[str], run_id: str = ""):
        self.names, self.log = names, out / "side-lane.log"
        cmd = [sys.executable, "-m", "kinject.cli", "demo", "--out", str(out), *(["--quick"] if quick else [])]
        for n in names:
            cmd += ["--only", n]
        env = {**os.environ, "KINJECT_DEMO_SIDE_LANE": "0", "KINJECT_DEMO_WORKERS": "1", "OMP_NUM_THREADS": "1",
               RUN_ID_ENV: run_id}
        self.t0 = time.perf_counter()
        self.wall_s = self.cpu_s = self.waited_s = None
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        console.print(f"[cyan]side lane[/cyan]: {', '.join(names)} in a background process (log: {self.log})")

    def running(self) -> bool:
        """Still busy, without reaping it: reaping inside a stage would add the lane's CPU time to
        that stage's child-process CPU (`StageTimings`); `wait` reaps it between stages."""
        if self.proc.returncode is not None:
            return False
        if hasattr(os, "waitid"):
            try:
                return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
            except ChildProcessError:
                return False
        return self.proc.poll() is None

    def wait(self) -> None:
        t = time.perf_counter()
        c0 = children_cpu_s()
        rc = self.proc.wait()
        c1 = children_cpu_s()
        self.wall_s, self.waited_s = time.perf_counter() - self.t0, time.perf_counter() - t
        self.cpu_s = None if c0 is None or c1 is None else c1 - c0
        done = f"after {self.wall_s:.1f}s (waited {self.waited_s:.1f}s)"
        if rc == 0:
            console.print(f"[cyan]side lane[/cyan] finished {done}")
        else:  # the in-process pass re-runs the unfinished stages and shows their error
            console.print(f"[yellow]side lane exited with {rc} {done}; see {self.log}; running its stages here[/yellow]")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


RUN_ID_ENV = "KINJECT_DEMO_RUN_ID"  # a side lane records its stages under its parent's run
TIMINGS_FILE = "timings.json"


def children_cpu_s() -> float | None:
    """User + system CPU seconds of this process's finished, reaped child processes (worker
    pools, the side lane); None where `resource` is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (the side lane and the main lane update one timings file)."""
    try:
        import fcntl
    except ImportError:  # no flock: the two writers are seconds apart in practice
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class StageTimings:
    """`<out>/timings.json`: per stage, every attempt (run id, process, wall and CPU seconds: its
    own, its child processes', total) and the headline `wall_s` / `cpu_s` of the latest run that
    ran it (its attempts in that run added: the side lane's real run and the in-process pass
    after it). Per run: start, wall seconds, cores, side lane on or off, and the side lane
    process's wall / CPU / waited seconds. Each update re-reads the file under a lock and writes
    it atomically, so resumed runs and the side lane's own process merge into one file."""

    def __init__(self, out: Path, run_id: str, process: str = "main"):
        self.path, self.lock = out / TIMINGS_FILE, out / f".{TIMINGS_FILE}.lock"
        self.run_id, self.process = run_id, process

    def read(self) -> dict:
        import json

        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {"stages": {}, "runs": {}}
        data.setdefault("stages", {})
        data.setdefault("runs", {})
        return data

    def _update(self, change: Callable[[dict], None]) -> None:
        from kinject.io import write_json_atomic

        with _locked(self.lock):
            data = self.read()
            change(data)
            write_json_atomic(self.path, data)

    def stage(self, st: Stage, wall_s: float, self_cpu_s: float, children_cpu: float | None, ok: bool) -> None:
        attempt = {"run": self.run_id, "process": self.process, "ok": ok, "wall_s": round(wall_s, 2),
                   "self_cpu_s": round(self_cpu_s, 2),
                   "children_cpu_s": None if children_cpu is None else round(children_cpu, 2),
                   "cpu_s": round(self_cpu_s + (children_cpu or 0.0), 2),
                   "ended": time.strftime("%Y-%m-%dT%H:%M:%S")}

        def change(data: dict) -> None:
            entry = data["stages"].setdefault(st.name, {"attempts": []})
            entry["lane"], entry["order"] = st.lane, st.order
            entry["attempts"].append(attempt)
            latest = [a for a in entry["attempts"] if a["run"] == self.run_id]
            entry.update(run=self.run_id, ok=all(a["ok"] for a in latest),
                         wall_s=round(sum(a["wall_s"] for a in latest), 2),
                         cpu_s=round(sum(a["cpu_s"] for a in latest), 2))

        self._update(change)

    def run(self, **fields) -> None:
        self._update(lambda data: data["runs"].setdefault(self.run_id, {}).update(fields))


def run_demo(out: Path, quick: bool = False, only: list[str] | None = None) -> DemoContext:
    global _side_lane
    ctx = DemoContext(out=out, quick=quick)
    out.mkdir(parents=True, exist_ok=True)
    stages = [st for st in registered_stages() if not only or st.name in only]
    side = [st for st in stages if st.lane == "side"]
    in_lane = bool(os.environ.get(RUN_ID_ENV))  # this process is a side lane
    timings = StageTimings(out, os.environ.get(RUN_ID_ENV) or uuid.uuid4().hex[:12],
                           "side lane" if in_lane else "main")
    if not in_lane:
        timings.run(started=time.strftime("%Y-%m-%dT%H:%M:%S"), cores=os.cpu_count(), quick=quick,
                    only=only or [], side_lane=side_lane_enabled() and len(stages) > len(side) > 0)
    lane: SideLane | None = None
    t_all = time.perf_counter()
    try:
        for st in stages:
            if st.lane == "side" and lane is None and side_lane_enabled() and len(stages) > len(side):
                # prerequisites: the main stages already run (world, retrieval), minus the foundation check
                before = [p.name for p in stages if p.order < st.order and p.name != "foundation"]
                lane = _side_lane = SideLane(out, quick, before + [s.name for s in side], timings.run_id)
            if st.lane == "side" and lane is not None:
                continue  # deferred: runs in-process (normally a skip) once the main lane is done
            if lane is not None and side and st.order > side[-1].order:
                _finish_side_lane(ctx, lane, side, out, timings)
                side = []
            _run_stage(ctx, st, out, timings)
        if lane is not None and side:
            _finish_side_lane(ctx, lane, side, out, timings)
    finally:
        if lane is not None:
            lane.stop()
            _side_lane = None
        if not in_lane:
            timings.run(wall_s=round(time.perf_counter() - t_all, 2))
    ctx.summary["wall_time_s"] = round(time.perf_counter() - t_all, 1)
    return ctx


def _finish_side_lane(ctx: DemoContext, lane: SideLane, side: list[Stage], out: Path, timings: StageTimings) -> None:
    lane.wait()
    timings.run(side_lane_process={"stages": lane.names, "wall_s": round(lane.wall_s, 2),
                                   "cpu_s": None if lane.cpu_s is None else round(lane.cpu_s, 2),
                                   "main_lane_waited_s": round(lane.waited_s, 2), "exit_code": lane.proc.returncode})
    for st in side:
        _run_stage(ctx, st, out, timings)


def _run_stage(ctx: DemoContext, st: Stage, out: Path, timings: StageTimings | None = None) -> None:
    console.rule(f"[bold]{st.name}[/bold]: {st.help}")
    t0, c0, k0 = time.perf_counter(), time.process_time(), children_cpu_s()
    ok = False
    try:
        st.fn(ctx, out / st.name)
        ok = True
    finally:
        k1 = children_cpu_s()
        if timings is not None:  # failed stages too: their time was spent
            timings.stage(st, time.perf_counter() - t0, time.process_time() - c0,
                          None if k0 is None or k1 is None else k1 - k0, ok)
    console.print(f"[green]done[/green] {st.name} in {time.perf_counter() - t0:.1f}s")


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Annotated[Path | None, typer.Option("--out", help="output root (tiny: outputs/demo, "
                                                 "smollm2: outputs/real)")] = None,
        quick: Annotated[bool, typer.Option("--quick", help="smaller preset")] = False,
        only: Annotated[list[str] | None, typer.Option("--only", help="run only these stages (tiny)")] = None,
        preset: Annotated[str, typer.Option("--preset", help="tiny: the embedded tiny world; smollm2: a real "
                                            "frozen base, SmolLM2-135M-Instruct (make real-model)")] = "tiny",
        tiny_out: Annotated[Path, typer.Option("--tiny-out", help="smollm2: where the tiny world and its "
                                               "experts are (or are made)")] = Path("outputs/demo"),
    ) -> None:
        """Run the whole pipeline on the embedded tiny world (the README's main job), or with a real base."""
        from kinject.errors import UserError

        if preset not in ("tiny", "smollm2"):
            raise UserError(f"unknown demo preset {preset!r}; use tiny or smollm2")
        if preset == "smollm2":
            if only:
                raise UserError("--only applies to the tiny preset; the smollm2 stages skip themselves when done")
            from kinject.recipes.smollm2 import run_real_preset

            out = out or Path("outputs/real")
            ctx = run_real_preset(out, tiny_out, quick=quick)
        else:
            out = out or Path("outputs/demo")
            ctx = run_demo(out, quick=quick, only=only)
        for k, v in ctx.summary.items():
            typer.echo(f"{k}: {v}")
        typer.echo(f"stage wall and CPU seconds: {out / TIMINGS_FILE}")
        typer.echo(f"outputs under {out}")
